'use strict';
/*
 * Node.js 20 runtime bootstrap: serves one function over HTTP/1.1 (runtimes/README.md is the contract).
 * Standard library only. Run as `node bootstrap.js` with the settings in the environment.
 *
 * Why the shape it has:
 * - Node's own http server, with keep-alive idle timeouts switched off: the platform pools connections
 *   to an instance and must never see one closed under a request it is sending.
 * - One event loop, so admission and /_/drain are atomic without a lock.
 * - Each invocation runs inside an AsyncLocalStorage scope; process.stdout/stderr.write route a line to
 *   the invocation whose scope is active, so concurrent invocations never see each other's lines.
 * - Timeouts: a timer per invocation answers Function.Timeout when the handler is still awaiting. A
 *   handler that blocks the event loop cannot be answered from it, so a small watchdog thread (started with
 *   the first invocation) reads the running deadlines from shared memory; when one is overdue by
 *   WATCHDOG_GRACE_MS it writes the Function.Timeout reply on the connection's socket itself and kills the
 *   process (without logs in that reply: they live on the blocked thread).
 * - Cluster mode (runtimes/README.md section 6) is kept at the end of the file and runs only when asked
 *   (a GET of /_/pool, a /_/specialize with codeSha256, CONSUL_HTTP_ADDR in the environment). Node has no
 *   flock, so code named by URL is fetched by the command in FAAS_CODE_FETCHER (the appliance's launcher
 *   sets it): the same file lock, package checks and once-per-node fetch as every other instance.
 *
 * Measured on the 2-core build machine, warm keep-alive loop with Python's http.client, 2000 requests of
 * a hello handler over one connection, after JIT warm-up: ~12,000 req/s, p50 0.076 ms (the client's own
 * cost included; the Python bootstrap measured ~13,000 req/s, p50 0.074 ms the same way).
 */
const http = require('http');
const fs = require('fs');
const path = require('path');
const { AsyncLocalStorage } = require('async_hooks');

const RUNTIME = 'nodejs20';
const LOG_CAP = 256 * 1024;
const LOG_HEAD = LOG_CAP / 2;  // of which the first lines; the rest are the last lines
const MAX_BODY = 32 * 1024 * 1024;
const DRAIN_GRACE_MS = 2000; // see DRAIN_GRACE_S in the Python bootstrap
const WATCHDOG_GRACE_MS = 250;
const SLOTS = 256; // watchdog slots: invocations running at once, at most
const RID_BYTES = 128;
const HANDLER_RE = /^([A-Za-z_][A-Za-z0-9_]*(?:\/[A-Za-z_][A-Za-z0-9_.-]*)*)\.([A-Za-z_$][A-Za-z0-9_$]*)$/;
const STARTING = 'starting', POOL = 'pool', READY = 'ready', FAILED = 'failed', DRAINING = 'draining';
const CODE_DIGEST_RE = /^[0-9a-f]{64}$/;
const CONSUL_TIMEOUT_MS = 5000;
const CODE_FETCH_TIMEOUT_MS = 120000;

function configFromEnv(e) {
  const int = (v, d) => { const n = v ? Number(v) : d; if (!Number.isFinite(n)) throw new Error(`not a number: ${v}`); return n; };
  return {
    handler: e.FAAS_HANDLER || null,
    codeDir: e.FAAS_CODE_DIR || null,
    host: e.FAAS_HOST || '127.0.0.1',
    port: int(e.FAAS_PORT || e.NOMAD_PORT_http, 8080),
    socket: e.FAAS_SOCKET || null,
    functionName: e.FAAS_FUNCTION_NAME || 'function',
    functionVersion: e.FAAS_FUNCTION_VERSION || '1',
    memoryMb: int(e.FAAS_MEMORY_MB, 128),
    timeoutS: int(e.FAAS_TIMEOUT_S, 3),
    maxInflight: Math.max(1, int(e.FAAS_MAX_INFLIGHT, 1)),
    instanceId: e.FAAS_INSTANCE_ID || e.NOMAD_ALLOC_ID || 'i-' + require('crypto').randomBytes(6).toString('hex'),
    pool: ['1', 'true', 'yes'].includes(e.FAAS_POOL),
    readyFd: e.FAAS_READY_FD ? int(e.FAAS_READY_FD) : null,
    // The node's Consul agent and this instance's token, read once here: the environment a
    // function brings at /_/specialize may name its own Consul and must not redirect ours.
    consulAddr: e.CONSUL_HTTP_ADDR || null,
    consulToken: e.CONSUL_HTTP_TOKEN || '',
    region: e.FAAS_REGION || null,
    accountId: e.FAAS_ACCOUNT_ID || null,
  };
}

const DEFAULT_REGION = 'us-east-1', DEFAULT_ACCOUNT = '000000000000';

/** Lambda's unqualified function ARN (7 fields): a trigger invokes the function, not a version. */
const functionArn = (cfg) => `arn:aws:lambda:${cfg.region || DEFAULT_REGION}:${cfg.accountId || DEFAULT_ACCOUNT}:function:${cfg.functionName}`;

/** Lambda's log stream name shape, YYYY/MM/DD/[version]<id>, with the instance id as the id. */
const logStream = (cfg) => `${new Date().toISOString().slice(0, 10).replace(/-/g, '/')}/[${cfg.functionVersion}]${cfg.instanceId}`;

/** The variables Lambda sets (runtimes/README.md section 1); AWS_REGION and AWS_DEFAULT_REGION keep a function's own. */
function lambdaEnv(cfg, env) {
  const region = cfg.region || DEFAULT_REGION;
  return {
    AWS_LAMBDA_FUNCTION_NAME: cfg.functionName,
    AWS_LAMBDA_FUNCTION_VERSION: String(cfg.functionVersion),
    AWS_LAMBDA_FUNCTION_MEMORY_SIZE: String(cfg.memoryMb),
    AWS_LAMBDA_LOG_GROUP_NAME: `/aws/lambda/${cfg.functionName}`,
    AWS_LAMBDA_LOG_STREAM_NAME: logStream(cfg),
    AWS_LAMBDA_INITIALIZATION_TYPE: 'on-demand',
    AWS_EXECUTION_ENV: `AWS_Lambda_${RUNTIME}`,
    LAMBDA_TASK_ROOT: cfg.codeDir ? path.resolve(cfg.codeDir) : '',
    LAMBDA_RUNTIME_DIR: __dirname,
    _HANDLER: cfg.handler || '',
    TZ: ':UTC',
    AWS_REGION: env.AWS_REGION || region,
    AWS_DEFAULT_REGION: env.AWS_DEFAULT_REGION || env.AWS_REGION || region,
  };
}

/**
 * Layers: /opt/nodejs/node20/node_modules and /opt/nodejs/node_modules are searched after the code's own
 * node_modules, as on Lambda (FAAS_LAYERS_DIR replaces /opt for an unsandboxed instance).
 */
function useLayers(env) {
  const opt = env.FAAS_LAYERS_DIR || '/opt';
  const dirs = [`${opt}/nodejs/node20/node_modules`, `${opt}/nodejs/node_modules`];
  const have = (env.NODE_PATH || '').split(path.delimiter).filter(Boolean);
  env.NODE_PATH = [...dirs.filter((d) => !have.includes(d)), ...have].join(path.delimiter);
  require('module').Module._initPaths();
}

// Lambda's levels (AWS_LAMBDA_LOG_LEVEL) and what each console method logs at.
const LOG_LEVELS = { TRACE: 1, DEBUG: 2, INFO: 3, WARN: 4, ERROR: 5, FATAL: 6 };
const CONSOLE_LEVELS = { trace: 'TRACE', debug: 'DEBUG', info: 'INFO', log: 'INFO', warn: 'WARN', error: 'ERROR' };

/**
 * console.* as Lambda's Node.js runtime patches it: each call is one record,
 * `<ISO time>\t<request id>\t<LEVEL>\t<message>` (text), or with AWS_LAMBDA_LOG_FORMAT=JSON one JSON
 * object {timestamp, level, requestId, message} (an Error argument adds errorType, errorMessage,
 * stackTrace). AWS_LAMBDA_LOG_LEVEL drops records below it (JSON without it: INFO, as on Lambda).
 * Written through process.stdout, so they land in the running invocation's log.
 */
function patchConsole(requestId, env) {
  const util = require('util');
  const json = String(env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
  let min = LOG_LEVELS[String(env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase()] || (json ? LOG_LEVELS.INFO : 0);
  for (const [method, level] of Object.entries(CONSOLE_LEVELS)) {
    console[method] = (...args) => {
      if (LOG_LEVELS[level] < min) return;
      let message = util.format(...args);
      if (method === 'trace') message += '\n' + String(new Error().stack).split('\n').slice(2).join('\n');
      const ts = new Date().toISOString();
      if (!json) { process.stdout.write(`${ts}\t${requestId()}\t${level}\t${message}\n`); return; }
      const rec = { timestamp: ts, level, requestId: requestId(), message };
      const err = args.find((a) => a instanceof Error);
      if (err) Object.assign(rec, { errorType: err.name, errorMessage: err.message, stackTrace: String(err.stack || '').split('\n') });
      process.stdout.write(JSON.stringify(rec) + '\n');
    };
  }
  return (m) => { min = m; };
}

const errorOf = (errorType, errorMessage, requestId = null, stackTrace = []) => ({ errorType, errorMessage, requestId, stackTrace });

/** The error's stack as a list of frames, without the bootstrap's and Node's internal ones. */
function userStack(err) {
  if (!err || typeof err.stack !== 'string') return [];
  return err.stack.split('\n').slice(1).map((l) => l.trim())
    .filter((l) => l.startsWith('at ') && !l.includes(__filename) && !l.includes('node:internal') && !l.includes('(node:'));
}

function describe(err) {
  if (err instanceof Error || (err && typeof err === 'object' && 'message' in err)) return `${err.name || 'Error'}: ${err.message}`;
  return `Error: ${typeof err === 'string' ? err : JSON.stringify(err)}`;
}

const isOutOfMemory = (err) => err instanceof RangeError && /allocation failed|out of memory/i.test(err.message);

/** One invocation's log: complete lines, capped at LOG_CAP bytes, echoed to stdout with a prefix.
 *  Past the cap it keeps the first LOG_HEAD bytes and the last LOG_CAP - LOG_HEAD, with a line between
 *  them that says how much was dropped (the end of a noisy invocation matters as much as its start). */
class Capture {
  constructor(prefix, echo, rid) {
    this.prefix = prefix; this.echo = echo; this.rid = rid; this.lines = []; this.partial = ''; this.size = 0; this.cut = 0;
    this.cutLines = 0; this.tail = []; this.tailHead = 0; this.tailSize = 0;
  }
  write(s) {
    if (!s.includes('\n')) {
      this.partial += s;
      if (this.partial.length > LOG_CAP) { const p = this.partial; this.partial = ''; this.line(p); }
      return;
    }
    const parts = (this.partial + s).split('\n');
    this.partial = parts.pop();
    for (const line of parts) this.line(line);
  }
  line(line) {
    const n = Buffer.byteLength(line) + 1;
    if (this.size + n <= LOG_HEAD && !this.cut && this.tail.length === this.tailHead) {
      this.size += n;
      this.lines.push(line);
      this.echo(this.prefix + line + '\n');
      return;
    }
    if (this.size > LOG_CAP) return;  // finished: nothing more is kept
    const room = LOG_CAP - LOG_HEAD;
    if (n > room) { this.cut += n; this.cutLines += 1; return; }
    this.tail.push([line, n]); this.tailSize += n;
    while (this.tailSize > room) {
      const m = this.tail[this.tailHead][1]; this.tail[this.tailHead++] = null;
      this.tailSize -= m; this.cut += m; this.cutLines += 1;
    }
    if (this.tailHead > 4096 && this.tailHead * 2 > this.tail.length) { this.tail = this.tail.slice(this.tailHead); this.tailHead = 0; }
  }
  log(msg) { msg = String(msg); this.write(msg.endsWith('\n') ? msg : msg + '\n'); }
  finish() {
    if (this.partial) { const p = this.partial; this.partial = ''; this.line(p); }
    if (this.cut || this.tail.length > this.tailHead) {
      if (this.cut) {
        const note = `[faas] log truncated: ${this.cut} bytes in ${this.cutLines} lines were not kept between the first ` +
          `${LOG_HEAD} and the last ${LOG_CAP - LOG_HEAD} bytes (limit ${LOG_CAP} bytes per invocation)`;
        this.lines.push(note); this.echo(this.prefix + note + '\n');
      }
      for (let i = this.tailHead; i < this.tail.length; i++) {
        const line = this.tail[i][0]; this.lines.push(line); this.echo(this.prefix + line + '\n');
      }
      this.tail = []; this.tailHead = 0; this.cut = 0; this.cutLines = 0; this.tailSize = 0; this.size = LOG_CAP + 1;
    }
    return this.lines;
  }
}

class Instance {
  constructor(cfg) {
    this.cfg = cfg;
    this.state = cfg.pool ? POOL : STARTING;
    this.maxInflight = cfg.maxInflight;
    this.inflight = 0;
    this.invocations = 0;
    this.idleSince = Date.now();
    this.handler = null; this.initError = null; this.initLogs = []; this.initMs = null;
    this.waiters = []; // /_/ready?waitMs and /_/specialize answers waiting for the code to load
    this.conns = 0;
    this.finishing = false;
    this.exitCheck = null;
    this.als = new AsyncLocalStorage();
    this.base = Date.now();
    this.slots = null; this.ridBytes = null; this.freeSlots = null; this.watchdog = null;
  }

  start() {
    const realOut = process.stdout.write.bind(process.stdout);
    const realErr = process.stderr.write.bind(process.stderr);
    this.echo = realOut;
    const route = (real) => (chunk, encoding, cb) => {
      const cap = this.als.getStore();
      if (!cap) return real(chunk, encoding, cb);
      cap.write(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      const done = typeof encoding === 'function' ? encoding : cb;
      if (typeof done === 'function') process.nextTick(done);
      return true;
    };
    process.stdout.write = route(realOut);
    process.stderr.write = route(realErr);
    const server = http.createServer({ noDelay: true, keepAlive: true }, (req, res) => this.onRequest(req, res));
    server.keepAliveTimeout = 0; server.requestTimeout = 0; server.headersTimeout = 0; server.timeout = 0;
    server.on('connection', (sock) => { this.conns++; sock.on('close', () => { this.conns--; this.maybeExit(); }); });
    this.server = server;
    process.on('SIGTERM', () => { if (this.state !== DRAINING) this.setState(DRAINING); if (!this.inflight) this.finish(); });
    const onListening = () => {
      if (this.cfg.readyFd !== null) {
        const where = this.cfg.socket ? { socket: this.cfg.socket } : { port: server.address().port };
        try { fs.writeSync(this.cfg.readyFd, JSON.stringify(where) + '\n'); fs.closeSync(this.cfg.readyFd); } catch (e) { /* nobody listens */ }
      }
      if (!this.cfg.pool) this.load();
    };
    if (this.cfg.socket) {
      try { fs.unlinkSync(this.cfg.socket); } catch (e) { /* not there */ }
      server.listen(this.cfg.socket, onListening);
    } else {
      server.listen(this.cfg.port, this.cfg.host, onListening);
    }
  }

  setState(state) {
    this.state = state;
    if (state !== STARTING) { const w = this.waiters; this.waiters = []; for (const f of w) f(); }
  }

  /** Load the handler module; READY with the function or FAILED with the structured error. */
  async load() {
    const t0 = process.hrtime.bigint();
    const cap = new Capture('', this.echo, undefined);
    let fn = null, err = null;
    Object.assign(process.env, lambdaEnv(this.cfg, process.env));
    useLayers(process.env);
    patchConsole(() => { const c = this.als.getStore(); return c ? c.rid : this.lastRid; }, process.env);
    await this.als.run(cap, async () => {
      const { handler, codeDir } = this.cfg;
      const m = HANDLER_RE.exec(handler || '');
      if (!m || handler.includes('..')) {
        err = errorOf('Runtime.MalformedHandlerName', `Bad handler '${handler}': expected 'module.function', for example 'index.handler'`);
        return;
      }
      if (!codeDir) { err = errorOf('Runtime.ImportModuleError', 'Unable to import module: no code directory given'); return; }
      const [, modPath, fname] = m;
      const dir = path.resolve(codeDir);
      try { process.chdir(dir); } catch (e) { /* read-only or gone: imports will say */ }
      let mod;
      try {
        mod = await importModule(path.join(dir, modPath));
      } catch (e) {
        if (e instanceof SyntaxError) {
          err = errorOf('Runtime.UserCodeSyntaxError', `Syntax error in module '${modPath}': ${e.message}`, null,
            String(e.stack || '').split('\n').filter((l) => l && !l.includes(__filename) && !l.includes('node:internal')));
        } else {
          err = errorOf('Runtime.ImportModuleError', `Unable to import module '${modPath}': ${describe(e)}`, null, userStack(e));
        }
        return;
      }
      fn = mod ? mod[fname] : undefined;
      if (typeof fn !== 'function') {
        err = errorOf('Runtime.HandlerNotFound', `Handler '${fname}' ${fn === undefined ? 'is missing' : 'is not a function'} in module '${modPath}'`);
        fn = null;
      }
    });
    this.handler = fn; this.initError = err; this.initLogs = cap.finish();
    this.initMs = Math.round(Number(process.hrtime.bigint() - t0) / 1e3) / 1e3;
    this.idleSince = Date.now();
    if (this.state === STARTING) this.setState(err ? FAILED : READY);
    // Start the watchdog thread now (~2 ms of this thread) rather than in the first invocation.
    if (!err && !this.watchdog) setImmediate(() => { if (!this.watchdog) this.startWatchdog(); });
  }

  onRequest(req, res) {
    const chunks = [];
    let size = 0, tooBig = false;
    req.on('data', (c) => { size += c.length; if (size > MAX_BODY) tooBig = true; else chunks.push(c); });
    req.on('end', () => {
      if (tooBig) return this.send(res, 413, { error: 'event too large' });
      const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
      const [p, query] = req.url.split('?', 2);
      const m = req.method;
      if (p === '/_/invoke' && m === 'POST') return this.invoke(req, res, body);
      if (p === '/_/health' && m === 'GET') return this.send(res, 200, this.health());
      if (p === '/_/ready' && m === 'GET') return this.ready(res, query || '');
      if (p === '/_/drain' && m === 'POST') return this.drain(res, body);
      if (p === '/_/specialize' && m === 'POST') return this.specialize(res, body);
      if (p === '/_/pool' && m === 'GET') return this.send(res, this.state === POOL ? 200 : 503, { state: this.state });
      if (['/_/invoke', '/_/health', '/_/ready', '/_/drain', '/_/specialize', '/_/pool'].includes(p)) {
        return this.send(res, 405, { error: `method ${m} not allowed on ${p}` });
      }
      return this.send(res, 404, { error: `no such path: ${p}` });
    });
  }

  send(res, status, obj, headers) { this.sendRaw(res, status, JSON.stringify(obj), headers); }

  sendRaw(res, status, text, headers) {
    const h = { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) };
    if (headers) Object.assign(h, headers);
    res.writeHead(status, h);
    res.end(text);
  }

  health() {
    return {
      state: this.state, instanceId: this.cfg.instanceId, function: this.cfg.functionName, version: this.cfg.functionVersion,
      runtime: RUNTIME, inflight: this.inflight, maxInflight: this.maxInflight, invocations: this.invocations,
      idleMs: this.inflight ? 0 : Date.now() - this.idleSince, initDurationMs: this.initMs, pid: process.pid,
    };
  }

  ready(res, query) {
    const wait = Math.min(Math.max(Number(new URLSearchParams(query).get('waitMs')) || 0, 0), 600000);
    const answer = () => {
      if (this.state === READY) return this.send(res, 200, { state: READY, initDurationMs: this.initMs });
      if (this.state === FAILED) return this.send(res, 500, { state: FAILED, error: this.initError, initDurationMs: this.initMs, logs: this.initLogs });
      return this.send(res, 503, { state: this.state });
    };
    if (!wait || this.state !== STARTING) return answer();
    let done = false;
    const once = () => { if (!done) { done = true; clearTimeout(t); answer(); } };
    const t = setTimeout(once, wait);
    this.waiters.push(once);
  }

  drain(res, body) {
    let minIdle = 0;
    try {
      const b = body.length ? JSON.parse(body) : {};
      minIdle = Number((b && b.minIdleMs) || 0);
      if (!Number.isFinite(minIdle)) throw new Error('minIdleMs');
    } catch (e) {
      return this.send(res, 400, { error: 'body must be a JSON object like {"minIdleMs": 1000}' });
    }
    if (this.state === DRAINING) return this.send(res, 200, { drained: true });
    if (this.inflight) return this.send(res, 409, { drained: false, reason: 'busy' });
    if (Date.now() - this.idleSince < minIdle) return this.send(res, 409, { drained: false, reason: 'recently-used' });
    this.setState(DRAINING);
    this.send(res, 200, { drained: true });
    this.finish();
  }

  specialize(res, body) {
    let s;
    try {
      s = JSON.parse(body);
      if (!s || typeof s !== 'object' || Array.isArray(s)) throw new Error('not an object');
    } catch (e) {
      return this.send(res, 400, { error: 'body must be a JSON object: {function, version, handler, codeDir, memoryMb, timeoutS, maxInflight, env}' });
    }
    if (this.state !== POOL) return this.send(res, 409, { error: 'already specialized', state: this.state });
    Object.assign(this.cfg, {
      functionName: String(s.function || 'function'), functionVersion: String(s.version || '1'),
      handler: s.handler || null, codeDir: s.codeDir || null,
      memoryMb: Number(s.memoryMb) || this.cfg.memoryMb, timeoutS: Number(s.timeoutS) || this.cfg.timeoutS,
    });
    if (s.instanceId) this.cfg.instanceId = String(s.instanceId);
    const env = s.env || {};
    if (s.region || env.FAAS_REGION) this.cfg.region = String(s.region || env.FAAS_REGION);
    if (s.accountId || env.FAAS_ACCOUNT_ID) this.cfg.accountId = String(s.accountId || env.FAAS_ACCOUNT_ID);
    this.maxInflight = Math.max(1, Number(s.maxInflight) || 1);
    this.setState(STARTING); // from here on the instance has left the pool (accepted once)
    // Anything that goes wrong on the cluster steps: answer 502 and leave; the platform starts the function elsewhere.
    const leave = (what, e) => {
      if (this.state !== DRAINING) this.setState(DRAINING);
      this.send(res, 502, { error: `${what} failed: ${e.message}` }, { Connection: 'close' });
      this.finish();
    };
    const code = !this.cfg.codeDir && s.codeSha256 ? clusterFetchCode(s.codeUrl, s.codeSha256) : Promise.resolve(this.cfg.codeDir);
    code.then((dir) => {
      this.cfg.codeDir = dir;
      for (const [k, v] of Object.entries(s.env || {})) process.env[k] = String(v);
      return this.load().then(() => {
        const out = { state: this.state, function: this.cfg.functionName, version: this.cfg.functionVersion, initDurationMs: this.initMs };
        if (this.state === FAILED) { out.error = this.initError; out.logs = this.initLogs; return this.send(res, 200, out); }
        return clusterRegister(this).then(
          (sid) => { out.registered = sid; this.send(res, 200, out); },
          (e) => leave('Consul registration', e));
      });
    }, (e) => leave('code fetch', e));
  }

  invoke(req, res, body) {
    const rid = req.headers['x-request-id'] || require('crypto').randomUUID();
    const dl = Number(req.headers['x-deadline-ms']);
    const deadline = req.headers['x-deadline-ms'] && Number.isFinite(dl) ? dl : Date.now() + this.cfg.timeoutS * 1000;
    let event;
    try {
      event = body.length ? JSON.parse(body.toString('utf8')) : {};
    } catch (e) {
      return this.send(res, 400, { ok: false, error: errorOf('Runtime.InvalidEvent', `The event is not valid JSON: ${e.message}`, rid) });
    }
    if (this.state === FAILED) {
      return this.send(res, 200, { ok: false, error: { ...this.initError, requestId: rid }, logs: this.initLogs, durationMs: 0 });
    }
    let refused = null;
    if (this.state !== READY) refused = this.state === DRAINING ? 'draining' : 'starting';
    else if (this.inflight >= this.maxInflight) refused = 'capacity';
    if (refused) return this.send(res, 503, { refused }, { 'X-Faas-Refused': refused });
    if (deadline <= Date.now()) { // spent before it arrived: answer without running anything
      return this.send(res, 200, { ok: false, error: errorOf('Function.Timeout', 'Task timed out before it started: the deadline had passed', rid), logs: [], durationMs: 0 });
    }
    this.inflight++;
    this.lastRid = rid;
    const inv = { rid, res, done: false, t0: process.hrtime.bigint(), cap: new Capture(`requestId=${rid} `, this.echo, rid), slot: -1, timer: null };
    inv.timer = setTimeout(() => this.timedOut(inv), Math.min(Math.max(deadline - Date.now(), 0), 2147483647));
    this.watch(inv, req.socket, deadline);
    const ctx = this.context(rid, deadline, inv.cap);
    ctx.attempt = Number(req.headers['x-faas-attempt']) || 1; // retried asynchronous events (an extension)
    this.als.run(inv.cap, () => callHandler(this.handler, event, ctx)).then(
      (result) => {
        let text;
        try {
          text = JSON.stringify(result);
        } catch (e) {
          return this.complete(inv, errorOf('Runtime.ResultNotSerializable', `The handler's result cannot be encoded as JSON: ${describe(e)}`, rid));
        }
        this.complete(inv, null, text === undefined ? 'null' : text);
      },
      (err) => this.complete(inv, errorOf(isOutOfMemory(err) ? 'Function.OutOfMemory' : 'Function.Error', describe(err), rid, userStack(err))),
    );
  }

  context(rid, deadline, cap) {
    const { functionName: name, functionVersion: version } = this.cfg;
    return {
      awsRequestId: rid, requestId: rid, functionName: name, functionVersion: version,
      memoryLimitInMB: String(this.cfg.memoryMb), invokedFunctionArn: functionArn(this.cfg),
      logGroupName: `/aws/lambda/${name}`, logStreamName: this.logStream || (this.logStream = logStream(this.cfg)),
      callbackWaitsForEmptyEventLoop: true,
      identity: undefined, clientContext: undefined,
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      log: (msg) => cap.log(msg),
    };
  }

  complete(inv, error, text) {
    if (inv.done) return; // answered already (timeout)
    inv.done = true;
    clearTimeout(inv.timer);
    this.unwatch(inv);
    this.inflight--; this.invocations++; this.idleSince = Date.now();
    const logs = inv.cap.finish();
    const durationMs = Math.round(Number(process.hrtime.bigint() - inv.t0) / 1e3) / 1e3;
    const tail = `,"logs":${JSON.stringify(logs)},"durationMs":${durationMs}}`;
    this.sendRaw(inv.res, 200, error ? `{"ok":false,"error":${JSON.stringify(error)}${tail}` : `{"ok":true,"result":${text}${tail}`);
    if (this.state === DRAINING && !this.inflight) this.finish();
  }

  timedOut(inv) {
    if (inv.done) return;
    inv.done = true;
    this.unwatch(inv);
    this.inflight--; this.invocations++;
    if (this.state !== DRAINING) this.setState(DRAINING);
    const took = Number(process.hrtime.bigint() - inv.t0) / 1e9;
    const cap = inv.cap;
    const logs = cap.lines.concat(cap.partial ? [cap.partial] : []);
    this.send(inv.res, 200, {
      ok: false, error: errorOf('Function.Timeout', `Task timed out after ${took.toFixed(2)} seconds`, inv.rid, []),
      logs, durationMs: Math.round(took * 1e6) / 1e3,
    }, { 'X-Faas-Exiting': '1', Connection: 'close' });
    if (!this.inflight) this.finish();
  }

  /** Publish the invocation's deadline and socket to the watchdog thread (shared memory, no messages). */
  watch(inv, sock, deadline) {
    const fd = sock && sock._handle && sock._handle.fd;
    if (typeof fd !== 'number' || fd < 0) return;
    if (!this.watchdog) this.startWatchdog();
    const slot = this.freeSlots.pop();
    if (slot === undefined) return;
    inv.slot = slot;
    const rid = Buffer.from(inv.rid.slice(0, RID_BYTES - 1), 'latin1');
    this.ridBytes.fill(0, slot * RID_BYTES, (slot + 1) * RID_BYTES);
    rid.copy(this.ridBytes, slot * RID_BYTES);
    Atomics.store(this.slots, slot * 3 + 1, fd);
    Atomics.store(this.slots, slot * 3 + 2, Math.min(deadline - this.base, 2147483647));
    Atomics.store(this.slots, slot * 3, 1);
  }

  unwatch(inv) {
    if (inv.slot < 0) return;
    Atomics.store(this.slots, inv.slot * 3, 0);
    this.freeSlots.push(inv.slot);
    inv.slot = -1;
  }

  startWatchdog() {
    const { Worker } = require('worker_threads');
    const sab = new SharedArrayBuffer(SLOTS * 3 * 4);
    const rids = new SharedArrayBuffer(SLOTS * RID_BYTES);
    this.slots = new Int32Array(sab);
    this.ridBytes = Buffer.from(rids);
    this.freeSlots = Array.from({ length: SLOTS }, (_, i) => SLOTS - 1 - i);
    this.watchdog = new Worker(`(${watchdogMain.toString()})()`, {
      eval: true, workerData: { sab, rids, base: this.base, slots: SLOTS, ridBytes: RID_BYTES, grace: WATCHDOG_GRACE_MS },
      stdout: false, stderr: false, resourceLimits: { maxOldGenerationSizeMb: 8, maxYoungGenerationSizeMb: 1 },
    });
    this.watchdog.unref();
    this.watchdog.on('error', () => { /* without it, timers still answer handlers that await */ });
  }

  finish() {
    if (this.finishing) return;
    this.finishing = true;
    this.exitAt = Date.now() + DRAIN_GRACE_MS;
    setTimeout(() => this.exit(), DRAIN_GRACE_MS).unref();
    setImmediate(() => this.maybeExit());
  }

  maybeExit() {
    if (!this.finishing || this.conns !== 0 || this.exitCheck) return;
    // A connection still in the listen backlog is not counted until the loop accepts it: let the
    // loop poll once more, so it is answered (503 draining) and closed rather than reset by the exit.
    this.exitCheck = setTimeout(() => { this.exitCheck = null; if (this.conns === 0) this.exit(); }, 5);
  }

  exit() {
    if (this.exiting) return;
    this.exiting = true;
    if (this.cfg.socket) { try { fs.unlinkSync(this.cfg.socket); } catch (e) { /* gone */ } }
    const bye = () => process.exit(0);
    if (!this.consulServiceId) return bye();
    // A self-registered pool instance leaves Consul before it goes (else Consul reaps it after
    // DeregisterCriticalServiceAfter); never wait longer than Consul's own timeout for that.
    setTimeout(bye, CONSUL_TIMEOUT_MS);
    consulRequest(this.cfg, 'PUT', `/v1/agent/service/deregister/${encodeURIComponent(this.consulServiceId)}`).then(bye, bye);
  }
}

/** Runs on the watchdog thread: answers for a handler that blocks the event loop past its deadline. */
function watchdogMain() {
  const { workerData: w } = require('worker_threads');
  const fs = require('fs');
  const slots = new Int32Array(w.sab);
  const rids = Buffer.from(w.rids);
  setInterval(() => {
    const now = Date.now() - w.base;
    let hit = false;
    for (let i = 0; i < w.slots; i++) {
      if (Atomics.load(slots, i * 3) !== 1 || now <= Atomics.load(slots, i * 3 + 2) + w.grace) continue;
      hit = true;
      const rid = rids.toString('latin1', i * w.ridBytes, (i + 1) * w.ridBytes).replace(/\0+$/, '');
      const body = JSON.stringify({ ok: false, error: { errorType: 'Function.Timeout',
        errorMessage: 'Task timed out: the handler blocked the event loop past its deadline', requestId: rid, stackTrace: [] },
      logs: [], durationMs: null });
      const head = `HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nX-Faas-Exiting: 1\r\nConnection: close\r\n\r\n`;
      const out = Buffer.from(head + body);
      for (let off = 0, tries = 0; off < out.length && tries < 1000; tries++) {
        try { off += fs.writeSync(Atomics.load(slots, i * 3 + 1), out, off); } catch (e) { if (e.code !== 'EAGAIN') break; }
      }
    }
    if (hit) process.kill(process.pid, 'SIGKILL');
  }, 50);
}

/** Calls a Lambda-style handler: async (returns a promise), callback-style, or plain synchronous. */
function callHandler(fn, event, ctx) {
  return new Promise((resolve, reject) => {
    let settled = false;
    const cb = (err, result) => {
      if (settled) return;
      settled = true;
      if (err !== null && err !== undefined) reject(err); else resolve(result);
    };
    ctx.succeed = (r) => cb(null, r);
    ctx.fail = (e) => cb(e === undefined || e === null ? new Error('failed') : e);
    ctx.done = cb;
    let ret;
    try { ret = fn(event, ctx, cb); } catch (e) { cb(e); return; }
    if (ret && typeof ret.then === 'function') ret.then((r) => cb(null, r), (e) => cb(e === undefined || e === null ? new Error('rejected') : e));
    else if (fn.length < 3) cb(null, ret);
  });
}

/** require() the module, or import() it when it is an ES module (.mjs, or "type": "module"). */
async function importModule(base) {
  const { pathToFileURL } = require('url');
  for (const ext of ['.js', '.mjs', '.cjs']) {
    const file = base + ext;
    if (!fs.existsSync(file)) continue;
    if (ext === '.mjs') return import(pathToFileURL(file).href);
    try {
      return require(file);
    } catch (e) {
      if (e && e.code === 'ERR_REQUIRE_ESM') return import(pathToFileURL(file).href);
      throw e;
    }
  }
  return require(base); // a directory with index.js, or the error that says what is missing
}

// --- cluster mode (runtimes/README.md section 6): code fetch by digest, Consul self-registration ---

/** The directory of the code of ``digest`` in the node's cache, fetched through FAAS_CODE_FETCHER when absent. */
function clusterFetchCode(url, digest) {
  return new Promise((resolve, reject) => {
    if (typeof digest !== 'string' || !CODE_DIGEST_RE.test(digest)) throw new Error('codeSha256 must be 64 lowercase hex digits');
    const cache = process.env.FAAS_CODE_CACHE_DIR || path.join(require('os').tmpdir(), 'faas-code');
    const dest = path.join(cache, digest);
    if (fs.existsSync(dest)) return resolve(dest); // a directory there is complete: it is renamed into place
    if (!url) throw new Error('the code is not cached on this node and no codeUrl was given');
    let cmd;
    try { cmd = JSON.parse(process.env.FAAS_CODE_FETCHER || 'null'); } catch (e) { cmd = null; }
    if (!Array.isArray(cmd) || !cmd.length) {
      throw new Error('FAAS_CODE_FETCHER is not set (pool instances are started by `python -m appliance instance`, which sets it)');
    }
    const env = { ...process.env, FAAS_CODE_DIGEST: digest, FAAS_CODE_URL: String(url), FAAS_CODE_CACHE_DIR: cache };
    require('child_process').execFile(cmd[0], cmd.slice(1).map(String), { env, timeout: CODE_FETCH_TIMEOUT_MS, maxBuffer: 1 << 20 },
      (err, stdout, stderr) => {
        const said = String(stderr || '').trim();
        if (said) process.stderr.write(said + '\n'); // the fetch's own log line (event=code_fetched ...) or its error
        if (err) return reject(new Error(said.split('\n').pop() || err.message));
        resolve(String(stdout).trim().split('\n').pop() || dest);
      });
  });
}

/** One request to the node's Consul agent (cfg.consulAddr), with the instance's token when it has one
 *  (an empty token is none: Consul then applies its anonymous token); resolves on 2xx. */
function consulRequest(cfg, method, p, body) {
  return new Promise((resolve, reject) => {
    let addr = cfg.consulAddr;
    if (!addr.includes('://')) addr = 'http://' + addr;
    const u = new URL(addr.replace(/\/+$/, '') + p);
    const data = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const headers = data ? { 'Content-Type': 'application/json', 'Content-Length': data.length } : {};
    if (cfg.consulToken) headers['X-Consul-Token'] = cfg.consulToken;
    const req = (u.protocol === 'https:' ? require('https') : http).request(u, { method, headers, agent: false }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode < 300) return resolve(res.statusCode);
        reject(new Error(`Consul answered ${res.statusCode}: ${Buffer.concat(chunks).toString('utf8').trim().slice(0, 300)}`));
      });
    });
    req.setTimeout(CONSUL_TIMEOUT_MS, () => req.destroy(new Error(`Consul did not answer within ${CONSUL_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(data || undefined);
  });
}

/** A specialised pool instance lists itself as fn-<function> through the node's Consul agent, with an
 *  HTTP check on /_/ready; resolves to the service ID, or null outside cluster mode. */
function clusterRegister(inst) {
  if (!inst.cfg.consulAddr) return Promise.resolve(null);
  const { host, functionName: name, functionVersion: version, instanceId: iid } = inst.cfg;
  const port = inst.server.address().port;
  const sid = `fn-${name}-${iid}`;
  return consulRequest(inst.cfg, 'PUT', '/v1/agent/service/register', {
    ID: sid, Name: `fn-${name}`, Address: host, Port: port,
    Tags: ['faas', `function=${name}`, `version=${version}`, `instance=${iid}`, 'source=pool'],
    Meta: { function: name, version, instance_id: iid, runtime: RUNTIME, concurrency: String(inst.maxInflight), source: 'pool' },
    // Registered only once the code has loaded, so it starts passing (Consul's first probe comes
    // after a random stagger of up to one interval).
    Check: { CheckID: `${sid}-ready`, Name: 'ready', HTTP: `http://${host}:${port}/_/ready`, Status: 'passing',
      Interval: process.env.FAAS_CHECK_INTERVAL || '2s', Timeout: '1s', DeregisterCriticalServiceAfter: '1m' },
  }).then(() => { inst.consulServiceId = sid; return sid; });
}

function main() {
  let cfg;
  try {
    cfg = configFromEnv(process.env);
  } catch (e) {
    process.stderr.write(`bootstrap: bad setting: ${e.message}\n`);
    process.exit(2);
  }
  new Instance(cfg).start();
}

module.exports = { configFromEnv, Instance };
if (require.main === module) main();
