-- wrk script: every request carries the next token of a file (one JWT a
-- line), so no token is ever sent twice while the file lasts.
--   wrk ... -s tokens.lua URL -- TOKENS_FILE THREADS
-- Thread i of n uses lines i, i+n, i+2n, ... After the run, `done` prints
-- "tokens_used N" and "tokens_reused N" (requests that had to wrap around).
local threads = {}
local next_id = 0

function setup(thread)
    thread:set("id", next_id)
    next_id = next_id + 1
    table.insert(threads, thread)
end

function init(args)
    local file, n = args[1], tonumber(args[2])
    if not file or not n then
        error("usage: wrk ... -s tokens.lua URL -- TOKENS_FILE THREADS")
    end
    tokens = {}
    local line_no = 0
    for line in io.lines(file) do
        if line_no % n == id then
            tokens[#tokens + 1] = "Bearer " .. line
        end
        line_no = line_no + 1
    end
    if #tokens == 0 then
        error("no tokens for thread " .. id .. " in " .. file)
    end
    ntokens = #tokens
    sent = 0
end

function request()
    sent = sent + 1
    local i = (sent - 1) % ntokens + 1
    return wrk.format(nil, nil, { ["Authorization"] = tokens[i] })
end

function done(summary, latency, requests)
    local used, reused = 0, 0
    for _, t in ipairs(threads) do
        local s, n = t:get("sent"), t:get("ntokens")
        used = used + math.min(s, n)
        reused = reused + math.max(s - n, 0)
    end
    io.write(string.format("tokens_used %d\ntokens_reused %d\n", used, reused))
end
