// A Node https client for the TLS capture tests: POSTs a body with a token header to
// 127.0.0.1 with a chosen SNI, saves the response body, prints JSON.
const https = require('https');
const fs = require('fs');
const [,, port, sni, path, bodyFile, outFile, token] = process.argv;
const body = fs.readFileSync(bodyFile);
const req = https.request({
  host: '127.0.0.1', port: Number(port), servername: sni, path, method: 'POST',
  rejectUnauthorized: false, agent: false,
  headers: { 'X-Token': token, 'Content-Type': 'application/octet-stream', 'Content-Length': body.length, 'Host': `${sni}:${port}` },
}, (res) => {
  const chunks = [];
  res.on('data', (c) => chunks.push(c));
  res.on('end', () => {
    fs.writeFileSync(outFile, Buffer.concat(chunks));
    console.log(JSON.stringify({ pid: process.pid, status: res.statusCode, local_port: res.socket.localPort }));
  });
});
req.on('error', (e) => { console.error(String(e)); process.exit(1); });
req.end(body);
