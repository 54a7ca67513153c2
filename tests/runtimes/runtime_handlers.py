"""The same test functions written for each runtime, so one contract suite drives both bootstraps."""

PYTHON = r'''
import os, sys, time

def hello(event, context):
    return "Hello Serverless"

def kinds(event, context):
    return {"string": "text", "dict": {"a": 1, "nested": [1, 2]}, "list": [1, "two", None],
            "none": None, "number": 4.5}[event["kind"]]

def ctx(event, context):
    return {"event": event, "requestId": context.aws_request_id, "requestIdAlias": context.request_id,
            "functionName": context.function_name, "functionVersion": context.function_version,
            "memory": context.memory_limit_in_mb, "arn": context.invoked_function_arn,
            "logGroup": context.log_group_name, "logStream": context.log_stream_name,
            "remaining": context.get_remaining_time_in_millis(), "env": os.environ.get("GREETING")}

def remaining(event, context):
    first = context.get_remaining_time_in_millis()
    time.sleep(0.02)
    return [first, context.get_remaining_time_in_millis()]

def logs(event, context):
    tag = event["tag"]
    print(f"{tag} out")
    print(f"{tag} err", file=sys.stderr)
    context.log(f"{tag} ctx")
    sys.stdout.write(f"{tag} no newline")
    return tag

def barrier_logs(event, context):
    tag, d = event["tag"], event["dir"]
    open(os.path.join(d, tag), "w").close()
    while len(os.listdir(d)) < event["n"]:
        time.sleep(0.001)
    for i in range(event["lines"]):
        print(f"{tag} {i}")
        time.sleep(0.0005)
    return tag

def wait_release(event, context):
    if event.get("started"):
        open(event["started"], "w").close()
    while not os.path.exists(event["release"]):
        time.sleep(0.002)
    print("released")
    return "released"

def touch(event, context):
    open(event["path"], "a").close()
    print("ran " + event.get("tag", ""))
    return "ran"

def boom(event, context):
    raise ValueError("bad thing")

def unserializable(event, context):
    return {"x": object()}

def big_logs(event, context):
    for i in range(300):
        print(f"{i:04d}" + "x" * 1019)
    return "done"

def spin(event, context):
    print("before spin")
    while True:
        pass

def hang(event, context):
    print("before hang")
    while True:
        time.sleep(0.05)

def hog(event, context):
    return len(bytearray(8 * 1024 ** 3))
'''

NODE = r'''
const fs = require('fs');
const path = require('path');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

exports.hello = async () => 'Hello Serverless';

exports.kinds = async (event) => ({ string: 'text', dict: { a: 1, nested: [1, 2] }, list: [1, 'two', null],
  none: null, number: 4.5 })[event.kind];

exports.ctx = async (event, context) => ({ event, requestId: context.awsRequestId, requestIdAlias: context.awsRequestId,
  functionName: context.functionName, functionVersion: context.functionVersion, memory: context.memoryLimitInMB,
  arn: context.invokedFunctionArn, logGroup: context.logGroupName, logStream: context.logStreamName,
  remaining: context.getRemainingTimeInMillis(), env: process.env.GREETING === undefined ? null : process.env.GREETING });

exports.remaining = async (event, context) => {
  const first = context.getRemainingTimeInMillis();
  await sleep(20);
  return [first, context.getRemainingTimeInMillis()];
};

exports.logs = async (event, context) => {
  const t = event.tag;
  console.log(`${t} out`);
  console.error(`${t} err`);
  context.log(`${t} ctx`);
  process.stdout.write(`${t} no newline`);
  return t;
};

exports.barrier_logs = async (event) => {
  fs.writeFileSync(path.join(event.dir, event.tag), '');
  while (fs.readdirSync(event.dir).length < event.n) await sleep(1);
  for (let i = 0; i < event.lines; i++) {
    console.log(`${event.tag} ${i}`);
    await new Promise((r) => setImmediate(r));
  }
  return event.tag;
};

exports.wait_release = async (event) => {
  if (event.started) fs.writeFileSync(event.started, '');
  while (!fs.existsSync(event.release)) await sleep(2);
  console.log('released');
  return 'released';
};

exports.touch = async (event) => {
  fs.appendFileSync(event.path, '');
  console.log('ran ' + (event.tag || ''));
  return 'ran';
};

exports.boom = async () => { throw new TypeError('bad thing'); };

exports.unserializable = async () => ({ x: 10n });

exports.big_logs = async () => {
  for (let i = 0; i < 300; i++) console.log(String(i).padStart(4, '0') + 'x'.repeat(1019));
  return 'done';
};

exports.spin = async () => { console.log('before spin'); for (;;) { /* blocks the event loop */ } };

exports.hang = async () => { console.log('before hang'); await new Promise(() => {}); };

exports.hog = async () => new ArrayBuffer(2 ** 33).byteLength;

exports.callback = (event, context, callback) => { setTimeout(() => callback(null, { via: 'callback', n: event.n }), 1); };

exports.callback_error = (event, context, callback) => { callback(new Error('cb failed')); };
'''

SOURCES = {"python3.11": ("index.py", PYTHON), "nodejs20": ("index.js", NODE)}

# Code that fails to load, per runtime: kind -> (files, handler, expected errorType)
BROKEN = {
    "python3.11": {
        "syntax": ({"index.py": "def handler(event, context)\n    return 1\n"}, "index.handler",
                   "Runtime.UserCodeSyntaxError"),
        "raises": ({"index.py": "print('loading')\nraise RuntimeError('init failed')\n"}, "index.handler",
                   "Runtime.ImportModuleError"),
        "missing-dependency": ({"index.py": "import no_such_module_xyz\n"}, "index.handler",
                               "Runtime.ImportModuleError"),
        "missing-module": ({"other.py": "x = 1\n"}, "index.handler", "Runtime.ImportModuleError"),
        "missing-handler": ({"index.py": "def other(event, context):\n    return 1\n"}, "index.handler",
                            "Runtime.HandlerNotFound"),
        "not-callable": ({"index.py": "handler = 42\n"}, "index.handler", "Runtime.HandlerNotFound"),
        "malformed": ({"index.py": "def handler(e, c):\n    return 1\n"}, "index", "Runtime.MalformedHandlerName"),
        "traversal": ({"index.py": "def handler(e, c):\n    return 1\n"}, "a/../index.handler",
                      "Runtime.MalformedHandlerName"),
    },
    "nodejs20": {
        "syntax": ({"index.js": "exports.handler = async (event => {\n"}, "index.handler",
                   "Runtime.UserCodeSyntaxError"),
        "raises": ({"index.js": "console.log('loading');\nthrow new Error('init failed');\n"}, "index.handler",
                   "Runtime.ImportModuleError"),
        "missing-dependency": ({"index.js": "require('no-such-module-xyz');\n"}, "index.handler",
                               "Runtime.ImportModuleError"),
        "missing-module": ({"other.js": "exports.x = 1;\n"}, "index.handler", "Runtime.ImportModuleError"),
        "missing-handler": ({"index.js": "exports.other = async () => 1;\n"}, "index.handler",
                            "Runtime.HandlerNotFound"),
        "not-callable": ({"index.js": "exports.handler = 42;\n"}, "index.handler", "Runtime.HandlerNotFound"),
        "malformed": ({"index.js": "exports.handler = async () => 1;\n"}, "index", "Runtime.MalformedHandlerName"),
        "traversal": ({"index.js": "exports.handler = async () => 1;\n"}, "a/../index.handler",
                      "Runtime.MalformedHandlerName"),
    },
}


def code(runtime):
    name, text = SOURCES[runtime]
    return {name: text}
