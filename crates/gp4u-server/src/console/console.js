// GP4U console: the job page's live charts (server-sent events) and its ledger check
// (WebCrypto). The server renders every value; this only updates them. No dependencies.
'use strict';

(function () {
  // Must match html.rs: CHART_POINTS, CHART_WIDTH, CHART_HEIGHT.
  const POINTS = 300;
  const WIDTH = 480;
  const HEIGHT = 160;

  // What the page did, for people debugging it and for the browser test's measurements:
  // each live sample's server receipt time (at_ms), when it was in the DOM (dom_ms) and the
  // next frame after (paint_ms), all milliseconds since the epoch.
  const record = { updates: [], ledger: null };
  window.gp4uConsole = record;

  function points(values, max) {
    const steps = Math.max(values.length - 1, 1);
    return values
      .map((value, index) => {
        const x = (index / steps) * WIDTH;
        const y = HEIGHT - Math.min(Math.max(value / max, 0), 1) * HEIGHT;
        return x.toFixed(1) + ',' + y.toFixed(1);
      })
      .join(' ');
  }

  function startLive() {
    const charts = document.getElementById('charts');
    if (!charts || charts.dataset.live !== 'true' || !window.EventSource) {
      return;
    }
    const series = [];
    for (const svg of charts.querySelectorAll('svg.live-chart')) {
      const raw = svg.dataset.values.trim();
      series.push({
        field: svg.dataset.field,
        floorMax: Number(svg.dataset.floorMax),
        values: raw === '' ? [] : raw.split(' ').map(Number),
        svg: svg,
        line: svg.querySelector('polyline'),
        now: document.getElementById('now-' + svg.dataset.field),
        max: document.getElementById('max-' + svg.dataset.field),
      });
    }
    const count = document.getElementById('sample-count');
    const last = document.getElementById('sample-last');
    const live = document.getElementById('live-status');
    const jobStatus = document.getElementById('job-status');
    let total = Number(charts.dataset.count) || 0;
    let lastAt = charts.dataset.afterMs ? Number(charts.dataset.afterMs) : -Infinity;
    let url = '/console/jobs/' + encodeURIComponent(charts.dataset.job) + '/telemetry';
    if (charts.dataset.afterMs) {
      url += '?after_ms=' + encodeURIComponent(charts.dataset.afterMs);
    }
    const source = new EventSource(url);
    live.textContent = 'Connecting to the live stream…';
    source.addEventListener('open', () => {
      live.textContent = 'Live: charts update as telemetry arrives.';
    });
    source.addEventListener('sample', (event) => {
      const sample = JSON.parse(event.data);
      // A reconnected stream starts again from the page's first sample: skip what is shown.
      if (!(sample.at_ms > lastAt)) {
        return;
      }
      lastAt = sample.at_ms;
      for (const one of series) {
        const value = Number(sample[one.field]);
        if (!Number.isFinite(value)) {
          continue;
        }
        one.values.push(value);
        if (one.values.length > POINTS) {
          one.values.splice(0, one.values.length - POINTS);
        }
        const max = Math.max(one.floorMax, ...one.values);
        one.line.setAttribute('points', points(one.values, max));
        one.svg.dataset.points = String(one.values.length);
        one.now.textContent = value.toFixed(1);
        one.max.textContent = max.toFixed(0);
      }
      total += 1;
      charts.dataset.count = String(total);
      count.textContent = String(total);
      last.textContent = sample.at;
      if (jobStatus.textContent === 'ASSIGNED') {
        jobStatus.textContent = 'RUNNING';
      }
      const update = { at_ms: sample.at_ms, dom_ms: Date.now(), paint_ms: null };
      record.updates.push(update);
      requestAnimationFrame(() => {
        update.paint_ms = Date.now();
      });
    });
    source.addEventListener('end', (event) => {
      const end = JSON.parse(event.data);
      jobStatus.textContent = end.status;
      live.textContent = 'The job has ended (' + end.status + '). Reload for its settlement and ledger.';
      source.close();
    });
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED) {
        live.textContent = 'Live stream interrupted; reconnecting…';
      }
    });
  }

  // ---- The ledger check: RFC 6962 / 9162 hashing and the signed note, as gp4u verify does.

  const encoder = new TextEncoder();

  function fromHex(text) {
    if (!/^[0-9a-f]*$/.test(text) || text.length % 2 !== 0) {
      throw new Error('not hex: ' + text.slice(0, 16));
    }
    const out = new Uint8Array(text.length / 2);
    for (let i = 0; i < out.length; i++) {
      out[i] = parseInt(text.substr(i * 2, 2), 16);
    }
    return out;
  }

  function toHex(bytes) {
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
  }

  function fromBase64(text) {
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) {
      out[i] = binary.charCodeAt(i);
    }
    return out;
  }

  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((sum, part) => sum + part.length, 0));
    let at = 0;
    for (const part of parts) {
      out.set(part, at);
      at += part.length;
    }
    return out;
  }

  function equal(left, right) {
    return left.length === right.length && left.every((byte, i) => byte === right[i]);
  }

  async function sha256(bytes) {
    return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  }

  // SHA-256(0x00 ‖ data) and SHA-256(0x01 ‖ left ‖ right) (RFC 6962 §2.1).
  const leafHash = (data) => sha256(concat(Uint8Array.of(0), data));
  const nodeHash = (left, right) => sha256(concat(Uint8Array.of(1), left, right));

  // RFC 9162 §2.1.3.2: the root an inclusion proof leads to.
  async function rootFromInclusion(leaf, index, size, proof) {
    if (index >= size) {
      throw new Error('index ' + index + ' is outside a tree of ' + size);
    }
    let fn = BigInt(index);
    let sn = BigInt(size) - 1n;
    let root = leaf;
    for (const sibling of proof) {
      if (sn === 0n) {
        throw new Error('the proof is too long');
      }
      if ((fn & 1n) === 1n || fn === sn) {
        root = await nodeHash(sibling, root);
        while ((fn & 1n) === 0n && fn !== 0n) {
          fn >>= 1n;
          sn >>= 1n;
        }
      } else {
        root = await nodeHash(root, sibling);
      }
      fn >>= 1n;
      sn >>= 1n;
    }
    if (sn !== 0n) {
      throw new Error('the proof is too short');
    }
    return root;
  }

  // A signed note (C2SP signed-note): its text, the checkpoint it carries, its signatures.
  function parseNote(note) {
    const split = note.lastIndexOf('\n\n');
    if (split < 0 || !note.endsWith('\n')) {
      throw new Error('the checkpoint is not a signed note');
    }
    const text = note.slice(0, split + 1);
    const lines = text.slice(0, -1).split('\n');
    if (lines.length < 3 || !/^[0-9]+$/.test(lines[1])) {
      throw new Error('the checkpoint body is malformed');
    }
    const signatures = note
      .slice(split + 2, -1)
      .split('\n')
      .map((line) => {
        if (!line.startsWith('\u2014 ')) {
          throw new Error('a signature line does not start with an em dash');
        }
        const [name, b64] = line.slice(2).split(' ');
        return { name: name, bytes: fromBase64(b64) };
      });
    return {
      text: text,
      origin: lines[0],
      size: Number(lines[1]),
      root: fromBase64(lines[2]),
      signatures: signatures,
    };
  }

  // A verifier key `<name>+<hex id>+<base64(0x01 ‖ public key)>`, its id checked.
  async function parseVerifierKey(key) {
    // Split at the first two '+' only: the base64 key may hold '+' itself.
    const first = key.indexOf('+');
    const second = key.indexOf('+', first + 1);
    if (first < 0 || second < 0) {
      throw new Error('the verifier key is malformed');
    }
    const name = key.slice(0, first);
    const id = key.slice(first + 1, second);
    const b64 = key.slice(second + 1);
    const raw = fromBase64(b64);
    if (raw.length !== 33 || raw[0] !== 1) {
      throw new Error('the verifier key is not an Ed25519 key');
    }
    const digest = await sha256(concat(encoder.encode(name + '\n'), raw));
    if (toHex(digest.slice(0, 4)) !== id) {
      throw new Error('the verifier key id does not match its name and key');
    }
    return { name: name, id: fromHex(id), publicKey: raw.slice(1) };
  }

  // 'pass', 'fail' or 'unsupported' (no Ed25519 in this browser's WebCrypto).
  async function checkSignature(note, key) {
    const signature = note.signatures.find(
      (one) => one.name === key.name && equal(one.bytes.slice(0, 4), key.id),
    );
    if (!signature) {
      return 'fail';
    }
    let cryptoKey;
    try {
      cryptoKey = await crypto.subtle.importKey('raw', key.publicKey, { name: 'Ed25519' }, false, [
        'verify',
      ]);
    } catch (error) {
      if (error && error.name === 'NotSupportedError') {
        return 'unsupported';
      }
      throw error;
    }
    const good = await crypto.subtle.verify(
      { name: 'Ed25519' },
      cryptoKey,
      signature.bytes.slice(4),
      encoder.encode(note.text),
    );
    return good ? 'pass' : 'fail';
  }

  async function checkLedger() {
    const status = document.getElementById('ledger-status');
    const block = document.getElementById('ledger-data');
    if (!status || !block) {
      return;
    }
    const set = (result, text) => {
      status.dataset.result = result;
      status.textContent = text;
      record.ledger = { result: result, text: text };
    };
    if (!window.crypto || !window.crypto.subtle) {
      set(
        'unsupported',
        'Not checked: WebCrypto needs a secure context (HTTPS, or this server on localhost). ' +
          'Check it with gp4u verify.',
      );
      return;
    }
    set('checking', 'Checking…');
    try {
      const ledger = JSON.parse(block.textContent);
      const entries = ledger.entries || [];
      const note = parseNote(ledger.checkpoint);
      if (note.size !== ledger.tree_size) {
        throw new Error('the checkpoint says size ' + note.size + ', the server ' + ledger.tree_size);
      }
      const key = await parseVerifierKey(ledger.public_key);
      const signature = await checkSignature(note, key);
      let failed = 0;
      for (const entry of entries) {
        const cell = document.getElementById('entry-check-' + entry.index);
        try {
          if (typeof entry.body !== 'string') {
            throw new Error('no body to hash');
          }
          const leaf = await leafHash(encoder.encode(entry.body));
          if (toHex(leaf) !== entry.leaf_hash) {
            throw new Error('the body does not hash to the leaf hash');
          }
          const root = await rootFromInclusion(
            leaf,
            entry.index,
            note.size,
            (entry.inclusion_proof || []).map(fromHex),
          );
          if (!equal(root, note.root)) {
            throw new Error('the proof leads to another root');
          }
          cell.textContent = 'pass: included';
          cell.dataset.result = 'pass';
        } catch (error) {
          failed += 1;
          cell.textContent = 'fail: ' + error.message;
          cell.dataset.result = 'fail';
        }
      }
      const root = toHex(note.root).slice(0, 16) + '…';
      if (signature === 'fail') {
        set('fail', 'FAIL: the checkpoint is not validly signed by ' + key.name + '.');
      } else if (failed > 0) {
        set('fail', 'FAIL: ' + failed + ' of ' + entries.length + ' entries did not check.');
      } else if (entries.length === 0) {
        set('empty', 'Nothing to check yet: no entry of this job is sealed.');
      } else if (signature === 'unsupported') {
        set(
          'partial',
          'Inclusion passed: ' + entries.length + ' entries lead to root ' + root +
            ' of the checkpoint (size ' + note.size + '). The signature was NOT checked: ' +
            "this browser's WebCrypto has no Ed25519; check it with gp4u verify.",
        );
      } else {
        set(
          'pass',
          'PASS: ' + entries.length + ' entries included in the checkpoint of size ' + note.size +
            ' (root ' + root + '), whose Ed25519 signature by ' + key.name + ' verifies.',
        );
      }
    } catch (error) {
      set('fail', 'FAIL: ' + error.message);
    }
  }

  // Run again on demand (the browser test tampers with the data and expects FAIL).
  record.checkLedger = checkLedger;

  // The ledger check as soon as the page is parsed; the live stream once it has loaded, so
  // that the open stream never holds up the page's load.
  if (document.readyState === 'loading') {
    document.addEventListener('DOMContentLoaded', checkLedger);
  } else {
    checkLedger();
  }
  if (document.readyState === 'complete') {
    startLive();
  } else {
    window.addEventListener('load', startLive);
  }
})();
