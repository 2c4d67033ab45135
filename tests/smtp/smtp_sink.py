#!/usr/bin/python3
"""A real SMTP server for the end-to-end tests (aiosmtpd, Debian python3-aiosmtpd).

    /usr/bin/python3 tests/smtp/smtp_sink.py PORT OUTDIR

Accepts every message (250) and writes it to OUTDIR/messages.jsonl, except:
  * a recipient whose local part starts with "tempfail": the first DATA of each Message-ID is
    answered 451 (try again), later ones 250;
  * a recipient whose local part starts with "reject": always 550.
Every DATA command is logged with its reply to OUTDIR/attempts.jsonl. Prints "READY" once it
listens; stops on SIGTERM.
"""
import asyncio
import email
import email.policy
import json
import os
import signal
import sys

from aiosmtpd.controller import Controller


class Handler:
    def __init__(self, outdir):
        self.outdir = outdir
        self.seen = {}

    def _log(self, name, record):
        with open(os.path.join(self.outdir, name), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        mid = msg.get("Message-ID", "")
        rcpts = [r.lower() for r in envelope.rcpt_tos]
        reply = "250 OK queued"
        if any(r.startswith("reject") for r in rcpts):
            reply = "550 5.1.1 mailbox unavailable"
        elif any(r.startswith("tempfail") for r in rcpts):
            n = self.seen.get(mid, 0)
            self.seen[mid] = n + 1
            if n == 0:
                reply = "451 4.3.0 temporary failure, try again"
        self._log("attempts.jsonl", {"message_id": mid, "reply": reply[:3]})
        if reply.startswith("250"):
            body = msg.get_body(preferencelist=("plain",))
            html = msg.get_body(preferencelist=("html",))
            self._log("messages.jsonl", {
                "message_id": mid,
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "subject": msg.get("Subject", ""),
                "body": body.get_content() if body is not None else None,
                "html": html.get_content() if html is not None else None,
            })
        return reply


def main():
    port, outdir = int(sys.argv[1]), sys.argv[2]
    os.makedirs(outdir, exist_ok=True)
    controller = Controller(Handler(outdir), hostname="127.0.0.1", port=port)
    controller.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    loop = asyncio.new_event_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.run_until_complete(stop.wait())
    controller.stop()


if __name__ == "__main__":
    main()
