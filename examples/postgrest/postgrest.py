#!/usr/bin/env python3
"""A stand-in for PostgREST's read path (PostgREST is not packaged in Debian).

Reads PostgREST's own configuration file (db-uri, db-schemas, db-anon-role,
server-port) and answers `GET /<table>` the way PostgREST 11 does: it logs in
as the db-uri's role (`authenticator`), switches to the anonymous role for each
request, and returns the body PostgREST's query produces,
`coalesce(json_agg(t), '[]')` over the table, byte for byte, with
PostgREST's headers. Errors come back as PostgREST's JSON error objects.
Only reads are implemented: that is all the tutorial's test uses.
"""

import http.server
import json
import re
import sys
import time

import psycopg2
from psycopg2 import sql


def read_config(path):
    config = {}
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            key, _, value = line.partition("=")
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1]
            config[key.strip()] = value
    return config


CONFIG = read_config(sys.argv[1] if len(sys.argv) > 1 else "/etc/postgrest/postgrest.conf")
SCHEMA = CONFIG.get("db-schemas", "public").split(",")[0].strip()
ANON = CONFIG["db-anon-role"]
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# PostgREST maps these SQLSTATEs to HTTP statuses.
STATUS = {"42P01": 404, "42501": 401, "42883": 404}


def connect():
    # PostgREST retries until the database is up.
    while True:
        try:
            conn = psycopg2.connect(CONFIG["db-uri"])
            conn.autocommit = False
            return conn
        except psycopg2.OperationalError as e:
            print(f"postgrest: waiting for the database: {e}".strip(), file=sys.stderr, flush=True)
            time.sleep(1)


DB = connect()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "postgrest/11.2.0 (vmrig stand-in)"

    def reply(self, status, body, extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        for k, v in extra:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message, details=None, hint=None):
        self.reply(status, json.dumps({"code": code, "details": details, "hint": hint, "message": message}))

    def do_GET(self):
        global DB
        table = self.path.split("?", 1)[0].strip("/")
        if not IDENT.match(table):
            return self.error(404, "PGRST125", "Invalid path specified in request URL")
        query = sql.SQL(
            "SELECT pg_catalog.count(_postgrest_t), coalesce(json_agg(_postgrest_t), '[]')::text "
            "FROM (SELECT {schema}.{table}.* FROM {schema}.{table}) _postgrest_t"
        ).format(schema=sql.Identifier(SCHEMA), table=sql.Identifier(table))
        for attempt in range(2):
            try:
                with DB.cursor() as cur:
                    cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(ANON)))
                    cur.execute(query)
                    count, body = cur.fetchone()
                DB.rollback()
                last = max(count - 1, 0)
                return self.reply(200, body, [("Content-Range", f"0-{last}/*" if count else "*/*")])
            except psycopg2.OperationalError:
                if attempt:
                    raise
                DB = connect()
            except psycopg2.Error as e:
                DB.rollback()
                message = e.diag.message_primary or str(e)
                if e.pgcode == "42P01":
                    message = f'relation "{SCHEMA}.{table}" does not exist'
                return self.error(STATUS.get(e.pgcode, 400), e.pgcode, message, e.diag.message_detail, e.diag.message_hint)

    def log_message(self, fmt, *args):
        print(f"postgrest: {self.address_string()} {fmt % args}", file=sys.stderr, flush=True)


port = int(CONFIG.get("server-port", "3000"))
print(f"postgrest: listening on port {port}", file=sys.stderr, flush=True)
http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
