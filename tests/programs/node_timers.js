// Node.js event loop under C/R (issue 12): timers (setTimeout, setInterval), fs.readFile
// and crypto.pbkdf2 on libuv's thread pool, with Node's own service thread that blocks
// every signal. The gates follow lib/crtest.h; everything printed is deterministic.
'use strict';
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const ROUNDS = Number(process.argv[2] || 200);
const gateDir = process.env.CR_GATE_DIR || '';

function line(s) {
  fs.writeSync(1, s + '\n');
}

function started() {
  const log = process.env.CR_STARTS_LOG;
  if (log) fs.appendFileSync(log, 'READY\n');
}

// cr_gate: print "hold k", wait (without blocking the loop) while gate-k exists,
// removing gate-k.ping whenever it appears, then print "go k".
function gate(k, then) {
  line(`hold ${k}`);
  const g = gateDir ? path.join(gateDir, `gate-${k}`) : '';
  const poll = () => {
    if (g && fs.existsSync(g)) {
      try {
        fs.unlinkSync(g + '.ping');
      } catch (e) {
        if (e.code !== 'ENOENT') throw e;
      }
      setTimeout(poll, 5);
      return;
    }
    line(`go ${k}`);
    then();
  };
  poll();
}

// Deterministic data file in the work directory.
const data = Buffer.alloc(1 << 16);
for (let i = 0; i < data.length; i++) data[i] = (i * 131 + 7) & 0xff;
fs.writeFileSync('node-data.bin', data);

let ticks = 0;
const ticker = setInterval(() => {
  ticks++;
}, 2);

// One phase: ROUNDS rounds of readFile (thread pool) + pbkdf2 (thread pool), each round
// started from a setTimeout; the digest chains every result.
function phase(k, digest, done) {
  let i = 0;
  const round = () => {
    fs.readFile('node-data.bin', (err, buf) => {
      if (err) throw err;
      const h = crypto.createHash('sha256').update(digest).update(buf).digest();
      crypto.pbkdf2(h, `salt-${k}-${i}`, 50, 32, 'sha256', (err2, key) => {
        if (err2) throw err2;
        digest = key.toString('hex');
        i++;
        if (i < ROUNDS) setTimeout(round, 1);
        else done(digest);
      });
    });
  };
  setTimeout(round, 1);
}

started();
line('READY');
let digest = 'start';
const step = (k) => {
  phase(k, digest, (d) => {
    digest = d;
    line(`phase ${k} ${d}`);
    if (k <= 3) {
      gate(k, () => step(k + 1));
    } else {
      clearInterval(ticker);
      if (ticks === 0) {
        line('FAIL: setInterval never ran');
        process.exit(1);
      }
      line('PASS');
    }
  });
};
step(1);
