'use strict';
// The seed's README example (koa 1, koa-session-redis3 1.3.4), with a few routes the interop
// tests need. Configuration from the environment: REDIS_PORT, PORT, KEY_SCHEMA, TTL, APP_KEYS
// (one key per line, first signs).
var session = require('koa-session-redis3');
var koa = require('koa');
var app = koa();

app.keys = (process.env.APP_KEYS || 'some secret hurr').split('\n').filter(Boolean);
app.use(session({
  store: {
    host: '127.0.0.1',
    port: Number(process.env.REDIS_PORT || 6379),
    ttl: Number(process.env.TTL || 3600),
    keySchema: process.env.KEY_SCHEMA || 'your:schema'
  }
}));

function readBody(ctx) {
  return function (done) {
    var chunks = [];
    ctx.req.on('data', function (c) { chunks.push(c); });
    ctx.req.on('end', function () { done(null, Buffer.concat(chunks).toString('utf8')); });
    ctx.req.on('error', done);
  };
}

app.use(function *() {
  var path = this.path;
  if (path === '/' && this.method === 'GET') {
    // The README example.
    var n = this.session.views || 0;
    this.session.views = ++n;
    this.body = n + ' views';
  } else if (path === '/views') {
    this.body = (this.session.views || 0) + ' views';
  } else if (path === '/session') {
    this.type = 'application/json';
    this.body = JSON.stringify(this.session);
  } else if (path.indexOf('/session/') === 0 && this.method === 'PUT') {
    this.session[decodeURIComponent(path.slice(9))] = JSON.parse(yield readBody(this));
    this.status = 204;
  } else if (path === '/logout' && this.method === 'POST') {
    this.session = null;
    this.status = 204;
  } else {
    this.status = 404;
  }
});

var server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', function () {
  console.log('listening on http://127.0.0.1:' + server.address().port);
});
