"""The peer for walrelay's benchmark: the straightforward Python relay many teams write by hand.

psycopg2 logical replication (pgoutput) + pika with publisher confirms (BlockingConnection:
each publish waits for its confirm), mandatory publishing, feedback after each confirm. It
decodes inserts, updates and deletes into JSON with text values. Usage:

    relay.py DSN SLOT PUBLICATION AMQP_URL EXCHANGE EXPECTED_EVENTS MAX_SECONDS

Prints one line: "<events> <seconds>" once it published EXPECTED_EVENTS or after MAX_SECONDS.
"""
import json
import struct
import sys
import time

import pika
import psycopg2
import psycopg2.extras


def read_tuple(buf, pos):
    (n,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    values = []
    for _ in range(n):
        kind = buf[pos : pos + 1]
        pos += 1
        if kind == b"t":
            (length,) = struct.unpack_from(">i", buf, pos)
            pos += 4
            values.append(buf[pos : pos + length].decode())
            pos += length
        else:  # n (null) or u (unchanged TOAST)
            values.append(None)
    return values, pos


def main():
    dsn, slot, publication, amqp_url, exchange, expected, max_seconds = sys.argv[1:8]
    expected = int(expected)
    deadline = time.monotonic() + float(max_seconds)
    amqp = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = amqp.channel()
    channel.confirm_delivery()
    conn = psycopg2.connect(dsn, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    cur.start_replication(
        slot_name=slot,
        decode=False,
        options={"proto_version": "1", "publication_names": publication},
    )
    relations = {}
    state = {"events": 0, "start": time.monotonic()}

    class Done(Exception):
        pass

    def consume(msg):
        buf = msg.payload
        tag = buf[0:1]
        if tag == b"R":
            (oid,) = struct.unpack_from(">I", buf, 1)
            pos = 5
            ns_end = buf.index(b"\0", pos)
            schema = buf[pos:ns_end].decode() or "pg_catalog"
            pos = ns_end + 1
            name_end = buf.index(b"\0", pos)
            name = buf[pos:name_end].decode()
            pos = name_end + 2  # name, replica identity
            (ncols,) = struct.unpack_from(">h", buf, pos)
            pos += 2
            cols = []
            for _ in range(ncols):
                pos += 1
                col_end = buf.index(b"\0", pos)
                cols.append(buf[pos:col_end].decode())
                pos = col_end + 1 + 8
            relations[oid] = (schema, name, cols)
        elif tag in (b"I", b"U", b"D"):
            (oid,) = struct.unpack_from(">I", buf, 1)
            schema, name, cols = relations[oid]
            pos = 5
            old = new = None
            if tag == b"I":
                pos += 1
                new, pos = read_tuple(buf, pos)
            elif tag == b"U":
                if buf[pos : pos + 1] in (b"K", b"O"):
                    old, pos = read_tuple(buf, pos + 1)
                new, pos = read_tuple(buf, pos + 1)
            else:
                old, pos = read_tuple(buf, pos + 1)
            op = {b"I": "insert", b"U": "update", b"D": "delete"}[tag]
            body = {
                "op": op,
                "schema": schema,
                "table": name,
                "lsn": str(msg.data_start),
                "old": dict(zip(cols, old)) if old else None,
                "new": dict(zip(cols, new)) if new else None,
            }
            channel.basic_publish(
                exchange=exchange,
                routing_key=f"{schema}.{name}.{op}",
                body=json.dumps(body),
                properties=pika.BasicProperties(delivery_mode=2, content_type="application/json"),
                mandatory=True,
            )
            state["events"] += 1
        msg.cursor.send_feedback(flush_lsn=msg.data_start)
        if state["events"] >= expected or time.monotonic() > deadline:
            raise Done()

    try:
        cur.consume_stream(consume)
    except Done:
        pass
    print(state["events"], round(time.monotonic() - state["start"], 3))


if __name__ == "__main__":
    main()
