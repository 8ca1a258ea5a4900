// Follows one job's events straight from Redis, as docs/protocol.md ("Events: live and replayed")
// says, with nothing but Node's standard library (RESP over a socket): subscribe to the live
// channel first, read the Stream from the wanted seq in pages, then take live messages, skipping
// seqs already seen and reading any gap from the Stream; with no message for a while, look in the
// Stream anyway. Prints one JSON line: {"seqs": [...], "types": [...], "result_status": "..."}.
//   node follow_redis.mjs <redis port> <job id> <from seq>
import net from "node:net";

const [port, jobId, fromSeq] = [Number(process.argv[2]), process.argv[3], Number(process.argv[4] || 0)];
const EVENTS = `llmq:job:{${jobId}}:events`;
const LIVE = `llmq:job:{${jobId}}:live`;
const RESULT = `llmq:job:{${jobId}}:result`;
const TERMINAL = new Set(["done", "error", "cancelled"]);

function encode(args) {
  const parts = args.map((a) => {
    const b = Buffer.from(String(a));
    return `$${b.length}\r\n${b}\r\n`;
  });
  return `*${args.length}\r\n${parts.join("")}`;
}

// One connection: replies in order; pushed pub/sub messages go to onMessage.
class Connection {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.waiting = [];
    this.onMessage = null;
    socket.on("data", (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (let parsed = this.parse(0); parsed; parsed = this.parse(0)) {
        this.buffer = this.buffer.subarray(parsed[1]);
        const value = parsed[0];
        if (Array.isArray(value) && value[0] === "message" && this.onMessage) this.onMessage(value[2]);
        else this.waiting.shift()(value);
      }
    });
  }

  static open(port) {
    return new Promise((ok, fail) => {
      const socket = net.connect(port, "127.0.0.1", () => ok(new Connection(socket)));
      socket.on("error", fail);
    });
  }

  // [value, next offset] of the reply at offset i, or null while it is incomplete.
  parse(i) {
    const eol = this.buffer.indexOf("\r\n", i);
    if (eol < 0) return null;
    const kind = String.fromCharCode(this.buffer[i]);
    const line = this.buffer.toString("utf8", i + 1, eol);
    let at = eol + 2;
    if (kind === "+") return [line, at];
    if (kind === "-") throw new Error(line);
    if (kind === ":") return [Number(line), at];
    if (kind === "$") {
      const n = Number(line);
      if (n < 0) return [null, at];
      if (this.buffer.length < at + n + 2) return null;
      return [this.buffer.toString("utf8", at, at + n), at + n + 2];
    }
    if (kind === "*") {
      const n = Number(line);
      const items = [];
      for (let k = 0; k < n; k++) {
        const item = this.parse(at);
        if (!item) return null;
        items.push(item[0]);
        at = item[1];
      }
      return [items, at];
    }
    throw new Error(`unexpected reply type ${kind}`);
  }

  call(...args) {
    return new Promise((ok) => {
      this.waiting.push(ok);
      this.socket.write(encode(args));
    });
  }
}

const live = await Connection.open(port);
const reader = await Connection.open(port);
const seen = [];
let next = fromSeq;
let ended = false;

function take(event) {
  if (event.seq < next) return true; // already have it
  if (event.seq > next) return false; // a gap: read the Stream
  seen.push(event);
  next = event.seq + 1;
  ended = TERMINAL.has(event.type);
  return true;
}

async function readStream() {
  while (!ended) {
    const page = await reader.call("XRANGE", EVENTS, `${next}-0`, "+", "COUNT", "100");
    if (page.length === 0) return;
    for (const [, fields] of page) {
      take(JSON.parse(fields[fields.indexOf("e") + 1]));
      if (ended) return;
    }
  }
}

let queue = Promise.resolve();
live.onMessage = (data) => {
  queue = queue.then(async () => {
    if (!ended && !take(JSON.parse(data))) await readStream();
  });
};
await live.call("SUBSCRIBE", LIVE); // first the channel, then the Stream: nothing falls between
await readStream();
const deadline = Date.now() + 90_000;
while (!ended && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 500));
  await queue;
  if (!ended) await readStream(); // quiet for a while: the job may have ended meanwhile
}
const result = JSON.parse(await reader.call("GET", RESULT));
console.log(JSON.stringify({ seqs: seen.map((e) => e.seq), types: seen.map((e) => e.type), result_status: result.status }));
process.exit(ended ? 0 : 1);
