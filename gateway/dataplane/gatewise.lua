-- gatewise's decision core for NGINX (lua-nginx-module + lua-cjson + LuaJIT FFI).
--
-- A port of gateway/decision.py and the request path of gateway/app.py: the same policy
-- document (compiled by gateway/dataplane/bundle.py into a "bundle"), the same order of
-- judgement and the same decision labels, so a request gets the same status and label here
-- as through the Python gateway (tests/gateway/test_dataplane_parity.py checks it).
--
-- State lives in shared dictionaries, so every worker enforces the same version:
--   gw_policy  "bundle" (the JSON text), "gen" (bumped on every push), "version"
--   gw_scores  client id -> score (-1: pushed as unknown), "\0feed" heartbeat, "\0mv"
--   gw_limits  GCRA theoretical arrival times, one per limit key (per NGINX node)
--   gw_stats   decision label -> count
-- Each worker decodes the bundle once per "gen" into Lua tables; a request costs one
-- shared-dict read to notice a new version. The admin server (loopback) takes pushes:
--   PUT  /admin/bundle   a compiled bundle (admin token)
--   POST /admin/scores   {"model_version", "alias", "results": [{"id", "score"}]}
--   GET  /admin/status   the enforced version, decisions, scores held
local cjson = require("cjson.safe")
local ffi = require("ffi")

local ngx = ngx
local shared = ngx.shared
local floor, ceil, max = math.floor, math.ceil, math.max
local type, pairs, ipairs, tostring, tonumber = type, pairs, ipairs, tostring, tonumber
local str_format, str_sub, str_find = string.format, string.sub, string.find

local M = { _VERSION = "1" }

ffi.cdef([[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]])

local crypto
for _, name in ipairs({ "crypto", "libcrypto.so.3", "libcrypto.so.1.1" }) do
  local ok, lib = pcall(ffi.load, name)
  if ok then
    crypto = lib
    break
  end
end
local digest = ffi.new("unsigned char[32]")

local function sha256(s)
  crypto.SHA256(s, #s, digest)
  return ffi.string(digest, 32)
end

local function unhex(h)
  return (h:gsub("..", function(x)
    return string.char(tonumber(x, 16))
  end))
end

local NULL = cjson.null
local STATUS = { allow = 200, throttle = 429, challenge = 403, block = 403 }
local ANON_ROLES = { "anonymous" }

local cfg = { token = nil, workers = 1 }
local B, B_gen = nil, nil -- this worker's decoded bundle and the generation it came from
local route_cache, route_cache_n = {}, 0
-- key -> {consumer, key id} or "revoked_key", for the current bundle only: a key seen before
-- skips the SHA-256 (a verified key is no secret to the process that verified it)
local auth_cache, auth_cache_n = {}, 0

local function nn(v) -- cjson null -> nil
  if v == NULL then
    return nil
  end
  return v
end

-- Python's float formatting where reasons show numbers ("0.5", "0.935")
local function fmt3(x)
  return str_format("%.3f", x)
end

-- the bundle -------------------------------------------------------------------------------
local function prepare(doc)
  if type(doc) ~= "table" or doc.bundle_schema ~= 1 then
    return nil, "not a gatewise bundle (bundle_schema 1)"
  end
  local keys = {}
  for kid, k in pairs(doc.keys or {}) do
    if type(k.sha256) ~= "string" or #k.sha256 ~= 64 then
      return nil, "keys." .. tostring(kid) .. ".sha256 is not 64 hex digits"
    end
    local c = doc.consumers[k.c + 1]
    if c == nil then
      return nil, "keys." .. tostring(kid) .. ".c names no consumer"
    end
    keys[kid] = { digest = unhex(k.sha256), revoked = k.revoked == true, consumer = c }
  end
  doc.keys = keys
  for _, c in ipairs(doc.consumers) do
    c.tier, c.region, c.device_type = nn(c.tier), nn(c.region), nn(c.device_type)
    c.attrs = { tier = c.tier, region = c.region, device_type = c.device_type }
    c.ckey = "c:{" .. c.id .. "}" -- its GCRA key, as gateway/decision.py names it
  end
  local t0 = nn(doc.target)
  for _, r in ipairs(doc.table.routes) do
    -- what the policy says about this configured route, looked up once here
    local rule = doc.routes[r.key] or doc.routes["* " .. r.template]
    r.cost = rule and rule[1] or 1
    r.rpm = rule and nn(rule[2]) or 0
    r.rkey_tail = "}:" .. r.key
    if t0 then
      r.target = t0.routes[r.key] or t0.routes["* " .. r.template] or false
    end
  end
  doc.version_s = tostring(doc.version)
  for _, r in ipairs(doc.table.patterns) do
    -- validated once here (a bad regex refuses the bundle, not a request)
    local ok, err = pcall(ngx.re.find, "/", r[2], "jo")
    if not ok or err then
      return nil, "table.patterns: " .. tostring(err)
    end
  end
  local t = nn(doc.target)
  doc.target = t
  if t then
    t.failure_mode = nn(t.failure_mode) or "open"
  end
  doc.client_id_header = nn(doc.client_id_header)
  return doc
end

local function bundle()
  local dict = shared.gw_policy
  local gen = dict:get("gen")
  if gen == B_gen then
    return B
  end
  local text = dict:get("bundle")
  if not text then
    return nil
  end
  local doc, err = prepare(cjson.decode(text))
  if not doc then -- cannot happen for a pushed bundle (checked on push); keep the last one
    ngx.log(ngx.ERR, "gatewise: stored bundle refused: ", err)
    return B
  end
  B, B_gen = doc, gen
  route_cache, route_cache_n = {}, 0
  auth_cache, auth_cache_n = {}, 0
  return B
end
M.bundle = bundle

-- routing (gateway/routing.py: exact templates first, then the most literal pattern) -------
local function match(b, method, path)
  local ck = method .. " " .. path
  local hit = route_cache[ck]
  if hit ~= nil then
    return hit or nil
  end
  local t = b.table
  local i = t.exact[ck]
  if not i then
    for _, p in ipairs(t.patterns) do
      if p[1] == method and ngx.re.find(path, p[2], "jo") then
        i = p[3]
        break
      end
    end
  end
  hit = i and t.routes[i + 1] or false
  if route_cache_n < 50000 then
    route_cache[ck] = hit
    route_cache_n = route_cache_n + 1
  end
  return hit or nil
end

local function allowed_methods(b, path)
  local seen, out = {}, {}
  for _, r in ipairs(b.table.routes) do
    local m = r.method
    if not seen[m] then
      local ok
      if r.regex then
        ok = ngx.re.find(path, r.regex, "jo")
      else
        ok = r.template == path
      end
      if ok then
        seen[m] = true
        out[#out + 1] = m
      end
    end
  end
  table.sort(out)
  return table.concat(out, ", ")
end

-- who is calling (gateway/auth.py: gw_<key id>_<secret>, SHA-256 compared as interned strings)
local function authenticate(b, key, authz)
  if key and key ~= "" then
    local hit = auth_cache[key]
    if hit then
      if hit == "revoked_key" then
        return hit
      end
      return "ok", hit[1], hit[2]
    end
    local kid, rest = key:match("^gw_([^_]*)_(.*)$")
    if not kid or not rest then
      return "invalid_key"
    end
    local k = b.keys[kid]
    local d = sha256(key)
    -- Lua strings are interned: == compares pointers, the same time whatever the bytes
    if k == nil or d ~= k.digest then -- the digest is computed either way: same work
      return "invalid_key"
    end
    if auth_cache_n >= 100000 then
      auth_cache, auth_cache_n = {}, 0
    end
    auth_cache_n = auth_cache_n + 1
    if k.revoked then
      auth_cache[key] = "revoked_key"
      return "revoked_key"
    end
    auth_cache[key] = { k.consumer, kid }
    return "ok", k.consumer, kid
  end
  if authz and str_sub(authz, 1, 7):lower() == "bearer " then
    return "invalid_token" -- JWTs are verified by the Python gateway only (docs/dataplane.md)
  end
  return "missing_credentials"
end

local function rbac_allowed(b, roles, route_key)
  for _, role in ipairs(roles) do
    local allowed = b.rbac[role]
    if allowed and allowed[route_key] then
      return true
    end
  end
  return false
end

-- the policy's lookups (gateway/policy.py) --------------------------------------------------
local function active(x, now)
  local e = nn(x.expires)
  return e == nil or e > now
end

local function route_mode(t, rs)
  local r = rs.target
  if not r then
    return t.mode
  end
  return nn(r.mode) or t.mode
end

local function pick_band(bands, score)
  if score == nil then
    return nil
  end
  local hit
  for _, band in ipairs(bands) do
    if score >= band.min then
      hit = band
    end
  end
  return hit
end

local function band_name(target, band)
  return target .. " >= " .. band.g .. " " .. band.action
end

local function exempt(b, attrs, now)
  for _, e in ipairs(b.exemptions) do
    if attrs[e.attribute] == e.value and active(e, now) then
      return e
    end
  end
  return nil
end

local counts = {} -- decision label -> count since the last flush (this worker)

local function count(label)
  counts[label] = (counts[label] or 0) + 1
end

local function flush_counts()
  local stats = shared.gw_stats
  for label, n in pairs(counts) do
    stats:incr(label, n, 0)
  end
  counts = {}
end

-- GCRA (gateway/ratelimit.py _evaluate, the same arithmetic) ---------------------------------
local function lock(dict, key)
  for _ = 1, 200 do
    if dict:add(key, true, 0.05) then
      return true
    end
    count("lock_waits") -- another worker holds this client's limits for a moment
    ngx.sleep(0.0005)
  end
  count("lock_timeouts")
  return false
end

-- one limit (key k1: interval t1, capacity cap1, cost c1) and optionally a second (k2 ...);
-- returns allowed, capacity, remaining, reset_after, retry_after, binding key
local function gcra(lk, k1, t1, cap1, c1, k2, t2, cap2, now)
  local dict = shared.gw_limits
  -- one worker runs one request's Lua to completion (no yield in between): no lock needed;
  -- with several, a per-client lock makes the read-modify-write atomic across them
  local locked = cfg.workers > 1 and lock(dict, lk)
  local tat1 = dict:get(k1)
  if tat1 == nil or tat1 < now then
    tat1 = now
  end
  local new1 = tat1 + c1 * t1
  local wait1 = new1 - cap1 * t1 - now
  local tat2, new2, wait2 = 0, 0, -1
  if k2 then
    tat2 = dict:get(k2)
    if tat2 == nil or tat2 < now then
      tat2 = now
    end
    new2 = tat2 + t2
    wait2 = new2 - cap2 * t2 - now
  end
  if wait1 > 1e-9 or wait2 > 1e-9 then
    if locked then
      dict:delete(lk)
    end
    -- the longest wait binds (the first limit on a tie, as max() picks in Python)
    if k2 and wait2 > 1e-9 and (wait1 <= 1e-9 or wait2 > wait1) then
      local rem = max(0, floor((now - (tat2 - cap2 * t2)) / t2 + 1e-9))
      return false, cap2, rem, tat2 - now, wait2, k2
    end
    local rem = max(0, floor((now - (tat1 - cap1 * t1)) / t1 + 1e-9))
    return false, cap1, rem, tat1 - now, wait1, k1
  end
  dict:set(k1, new1, new1 - now + 1)
  local rem1 = max(0, floor((now - (new1 - cap1 * t1)) / t1 + 1e-9))
  if k2 then
    dict:set(k2, new2, new2 - now + 1)
  end
  if locked then
    dict:delete(lk)
  end
  if k2 then
    local rem2 = max(0, floor((now - (new2 - cap2 * t2)) / t2 + 1e-9))
    if rem2 < rem1 then
      return true, cap2, rem2, new2 - now, 0, k2
    end
  end
  return true, cap1, rem1, new1 - now, 0, k1
end

-- the decision (gateway/decision.py DecisionCore._plan + _finish) -----------------------------
-- returns action, label, reason, status, rule name, then limit, remaining, reset_after and
-- retry_after of the binding limit (nil when decided before the limits)
local function decide(b, p, rs, score, now)
  local tier = b.tiers[p.tier or b.default_tier] or b.tiers[b.default_tier]
  local rpm, burst = tier[1], tier[2]
  local label, reason, rule_name = "allow", "within limits", nil
  local cid = p.id
  local a = b.allowances[cid]
  if a and active(a, now) and a.rpm > rpm then
    rpm = a.rpm
    burst = max(burst, rpm)
  end
  local o = b.overrides[cid]
  if o and not active(o, now) then
    o = nil
  end
  if o and o.mode == "shadow" then
    if o.action ~= "allow" then
      label, reason = "shadow_" .. o.action, "shadow override: " .. o.reason
      rule_name = "override " .. o.action
    end
    o = nil
  end
  if o then
    if o.action == "block" or o.action == "challenge" then
      return o.action, o.action, "override: " .. o.reason, STATUS[o.action], "override " .. o.action
    end
    if o.action == "throttle" and nn(o.rpm) then
      rpm = math.min(rpm, o.rpm)
      burst = math.min(burst, rpm)
      reason = "override: " .. o.reason
      rule_name = "override throttle"
    end
    if o.action == "allow" then
      score = nil -- an explicit allow overrides the model
    end
  end
  local t = b.target
  if t and t.mode ~= "off" and score ~= nil then
    -- the target's own bands decide (gateway/decision.py uses t.band, not the route's)
    local band = pick_band(t.bands, score)
    if band and band.action ~= "allow" and band.action ~= "log" then
      local e = exempt(b, p.attrs, now)
      if e then
        reason = "exempt from model action: " .. e.reason
      elseif t.mode == "shadow" then
        label = "shadow_" .. band.action
        reason = "shadow: score " .. fmt3(score) .. " >= " .. band.repr .. " would " .. band.action
        rule_name = band_name(t.name, band)
      elseif band.action == "block" or band.action == "challenge" then
        return band.action,
          band.action,
          "score " .. fmt3(score) .. " >= " .. band.repr,
          STATUS[band.action],
          band_name(t.name, band)
      else -- throttle: the client keeps a share of its limit
        local br = nn(band.rpm)
        if br then
          rpm = math.min(rpm, br)
        else
          rpm = max(1, floor(rpm * band.factor))
        end
        burst = max(1, math.min(burst, rpm))
        reason = "score " .. fmt3(score) .. " >= " .. band.repr .. ": throttled to " .. rpm .. "/min"
        rule_name = band_name(t.name, band)
      end
    end
  end
  local cost = rs.cost
  if cost > burst then
    cost = burst
  end
  local rrpm = rs.rpm
  local ok, limit, remaining, reset_after, retry_after, key = gcra(
    "L" .. cid,
    p.ckey or "c:{" .. cid .. "}",
    60.0 / rpm,
    burst,
    cost,
    rrpm > 0 and "r:{" .. cid .. rs.rkey_tail or nil,
    rrpm > 0 and 60.0 / rrpm or 0,
    rrpm,
    now
  )
  if not ok then
    local which = str_sub(key, 1, 1)
    return "throttle",
      "throttle",
      "rate limit " .. which .. " (" .. limit .. " burst): retry in " .. str_format("%.1f", retry_after) .. "s",
      429,
      rule_name,
      limit,
      remaining,
      reset_after,
      retry_after
  end
  return "allow", label, reason, 200, rule_name, limit, remaining, reset_after, 0
end
M.decide = decide

-- scores ---------------------------------------------------------------------------------------
-- available, score, model version: no heartbeat within max_stale_s = the feed is down
local feed_alive, feed_mv, feed_checked = false, nil, -1

local function lookup_score(cid, now)
  local dict = shared.gw_scores
  if now - feed_checked >= 0.1 then -- the heartbeat and model version: read 10 times a second
    feed_alive, feed_mv, feed_checked = dict:get("\0feed") ~= nil, dict:get("\0mv"), now
  end
  if not feed_alive then
    return false, nil, nil
  end
  local s = dict:get(cid)
  if s == nil or s < 0 then
    return true, nil, feed_mv
  end
  return true, s, feed_mv
end

-- the request path -----------------------------------------------------------------------------
local function refuse(status, err, headers, detail)
  local var = ngx.var
  count(var.gw_decision ~= "" and var.gw_decision or var.gw_auth ~= "" and var.gw_auth or "other")
  ngx.status = status
  if headers then
    for k, v in pairs(headers) do
      ngx.header[k] = v
    end
  end
  ngx.header["Content-Type"] = "application/json"
  local body = { error = err }
  if detail and detail ~= "" then
    body.detail = detail
  end
  ngx.print(cjson.encode(body))
  return ngx.exit(ngx.HTTP_OK)
end

function M.access()
  local var = ngx.var
  local rid = var.http_x_request_id
  if rid == nil or rid == "" then
    rid = var.request_id
  end
  var.gw_request_id = rid
  local b = bundle()
  if not b then
    var.gw_decision = "not_ready"
    return refuse(503, "policy_not_loaded", { ["Retry-After"] = "1" })
  end
  var.gw_policy_version = b.version_s
  local method, path = ngx.req.get_method(), var.uri
  local rs = match(b, method, path)
  if not rs then
    var.gw_decision = "no_route"
    var.gw_route = path
    var.gw_client_id = var.remote_addr
    local allowed = allowed_methods(b, path)
    if allowed ~= "" then
      return refuse(405, "method_not_allowed", { Allow = allowed })
    end
    return refuse(404, "no_route")
  end
  local template = rs.template
  var.gw_route = template
  var.gw_service = rs.service
  local key, authz = var.http_x_api_key, var.http_authorization
  local auth, p, kid
  if b.anonymous[rs.key] and (key == nil or key == "") and (authz == nil or authz == "") then
    local cid = b.client_id_header and var["http_" .. b.client_id_header]
    if cid == nil or cid == "" then
      cid = var.remote_addr or "anonymous"
    end
    auth, p = "anonymous", { id = cid, roles = ANON_ROLES, attrs = {} }
  else
    auth, p, kid = authenticate(b, key, authz)
  end
  var.gw_auth = auth
  if not p then
    var.gw_client_id = var.remote_addr
    return refuse(401, auth, { ["WWW-Authenticate"] = 'Bearer realm="gatewise"' })
  end
  local cid = p.id
  var.gw_client_id = cid
  if kid then
    var.gw_api_key_id = kid
  end
  if p.tier then
    var.gw_tier = p.tier
  end
  if p.region then
    var.gw_region = p.region
  end
  if p.device_type then
    var.gw_device_type = p.device_type
  end
  if auth ~= "anonymous" and not rbac_allowed(b, p.roles, rs.key) then
    var.gw_auth = "forbidden"
    return refuse(403, "forbidden")
  end
  local score = nil
  local t = b.target
  if b.scoring and t and t.mode ~= "off" then
    local available, s, mv = lookup_score(cid, ngx.now())
    if mv then
      var.gw_model_version = mv
    end
    if s then
      var.gw_score = s
    end
    if not available and t.failure_mode == "closed" and route_mode(t, rs) == "enforce" then
      var.gw_decision = "scoring_unavailable"
      return refuse(503, "scoring_no_feed", { ["Retry-After"] = "1" })
    end
    score = s
  end
  local action, label, reason, status, _, limit, remaining, reset_after, retry_after =
    decide(b, p, rs, score, ngx.now())
  var.gw_decision = label
  if limit then
    var.gw_rl_limit = limit
    var.gw_rl_remaining = remaining
    var.gw_rl_reset = ceil(reset_after)
  end
  if action ~= "allow" then
    local h = nil
    if limit then
      h = { ["Retry-After"] = tostring(max(1, ceil(retry_after))) }
    end
    return refuse(status, action, h, reason)
  end
  count(label)
  var.gw_upstream = rs.upstream
end

-- admin (loopback only) ------------------------------------------------------------------------
local function reply(status, body)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.print(cjson.encode(body))
  return ngx.exit(ngx.HTTP_OK)
end

local function read_body()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if data then
    return data
  end
  local path = ngx.req.get_body_file()
  if not path then
    return nil
  end
  local fh = io.open(path, "rb")
  if not fh then
    return nil
  end
  data = fh:read("*a")
  fh:close()
  return data
end

local function admin_allowed()
  local var = ngx.var
  local token = var.http_x_gatewise_admin_token
  if cfg.token and token and token == cfg.token then
    return true
  end
  local b = bundle()
  local key = var.http_x_api_key
  if b and key and key ~= "" then
    local auth, p = authenticate(b, key, nil)
    if auth == "ok" then
      for _, r in ipairs(p.roles) do
        if r == b.admin_role then
          return true
        end
      end
      return false, 403
    end
  end
  return false, 401
end

-- store a bundle (text) in the shared dict; (version) or (nil, error)
function M.store_bundle(text)
  local doc, err = prepare(cjson.decode(text))
  if not doc then
    return nil, err or "not JSON"
  end
  local dict = shared.gw_policy
  local ok, serr = dict:set("bundle", text)
  if not ok then
    return nil, "gw_policy dictionary: " .. tostring(serr) .. " (raise its size)"
  end
  dict:set("version", doc.version)
  local has_clock, now = pcall(ngx.now) -- not in init_by_lua
  dict:set("pushed_at", has_clock and now or 0)
  dict:incr("gen", 1, 0)
  return doc.version
end

local function push_scores(b)
  local body = cjson.decode(read_body() or "")
  if type(body) ~= "table" or type(body.results) ~= "table" then
    return reply(400, { error = "invalid_scores", detail = "`results` must be a list of {id, score}" })
  end
  local ttl = b and b.max_stale_s or 60
  local dict = shared.gw_scores
  local n = 0
  for i, r in ipairs(body.results) do
    local id, s = type(r) == "table" and r.id, type(r) == "table" and r.score
    if type(id) ~= "string" or id == "" then
      return reply(400, { error = "invalid_scores", detail = "results[" .. (i - 1) .. "].id must be a non-empty string" })
    end
    if s == NULL or s == nil then
      s = -1
    elseif type(s) ~= "number" or s ~= s or s < 0 or s > 1 then
      return reply(400, { error = "invalid_scores", detail = "results[" .. (i - 1) .. "].score must be a number in [0, 1] or null" })
    end
  end
  for _, r in ipairs(body.results) do
    local s = r.score
    if s == NULL or s == nil then
      s = -1
    end
    local ok, err, forcible = dict:set(r.id, s, ttl)
    if not ok then
      return reply(507, { error = "gw_scores dictionary full", detail = tostring(err), accepted = n })
    end
    if forcible then
      shared.gw_stats:incr("scores_evicted", 1, 0)
    end
    n = n + 1
  end
  local mv = nn(body.model_version)
  if mv ~= nil then
    dict:set("\0mv", tostring(mv))
  end
  dict:set("\0feed", ngx.now(), ttl)
  shared.gw_stats:incr("scores_pushed", n, 0)
  return reply(200, { accepted = n })
end

local function status()
  flush_counts()
  local dict = shared.gw_policy
  local stats = shared.gw_stats
  local decisions = {}
  for _, k in ipairs(stats:get_keys(0)) do
    decisions[k] = stats:get(k)
  end
  local b = bundle()
  return {
    policy_version = dict:get("version"),
    pushed_at = dict:get("pushed_at"),
    bundle_gen = dict:get("gen"),
    worker_version = b and b.version or NULL,
    worker_pid = ngx.worker.pid(),
    decisions = decisions,
    scores = {
      feed_alive = shared.gw_scores:get("\0feed") ~= nil,
      model_version = shared.gw_scores:get("\0mv"),
      free_bytes = shared.gw_scores:free_space(),
    },
    limits_free_bytes = shared.gw_limits:free_space(),
  }
end

function M.admin()
  local ok, code = admin_allowed()
  if not ok then
    return reply(code, { error = code == 403 and "forbidden" or "missing_credentials" })
  end
  local method, uri = ngx.req.get_method(), ngx.var.uri
  if uri == "/admin/bundle" and (method == "PUT" or method == "POST") then
    local version, err = M.store_bundle(read_body() or "")
    if not version then
      return reply(422, { error = "invalid_bundle", detail = err })
    end
    return reply(201, { policy_version = version })
  elseif uri == "/admin/scores" and method == "POST" then
    feed_checked = -1 -- this worker sees the feed at once; the others within 0.1 s
    return push_scores(bundle())
  elseif uri == "/admin/scores" and method == "DELETE" then
    shared.gw_scores:flush_all()
    feed_checked = -1
    return reply(200, { cleared = true })
  elseif uri == "/admin/status" and method == "GET" then
    return reply(200, status())
  end
  return reply(404, { error = "no_route" })
end

function M.ready()
  local b = bundle()
  if not b then
    return reply(503, { ready = false, policy_version = NULL })
  end
  return reply(200, { ready = true, policy_version = b.version })
end

-- init_worker_by_lua: decision counts reach the shared dictionary every second
function M.init_worker()
  cfg.workers = ngx.worker.count()
  ngx.timer.every(1, flush_counts)
end

-- init_by_lua: the admin token, and the last bundle written to disk (so a restarted NGINX
-- enforces the last pushed policy before the syncer's first push)
function M.init(opts)
  cfg.token = opts.token
  if opts.bundle_file then
    local fh = io.open(opts.bundle_file, "rb")
    if fh then
      local text = fh:read("*a")
      fh:close()
      local version, err = M.store_bundle(text)
      if not version then
        ngx.log(ngx.ERR, "gatewise: ", opts.bundle_file, " refused: ", err)
      end
    end
  end
  if not crypto then
    error("gatewise: libcrypto not found (SHA-256 of API keys)")
  end
end

return M
