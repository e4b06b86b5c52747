"""An SMTP server for Nova's mail tests (aiosmtpd on loopback).

Usage: python smtp_sink.py PORT DIR [starttls|tls CERT_PEM KEY_PEM [USER:PASSWORD]]

With `starttls` the server requires STARTTLS before MAIL; with `tls` it speaks TLS from the
first byte (SMTPS). With USER:PASSWORD it requires AUTH (PLAIN or LOGIN) with exactly those.

Prints "ready" once it listens. Every message it accepts (answers 250 to) is written to
DIR/msg-<n>.eml (to a temporary name first, then renamed, so a reader never sees half a file).
The file DIR/mode, read on every command, makes it misbehave:
  ok          accept (the default, also when the file is missing)
  451         answer the message with 451 (transient failure)
  550         answer the message with 550 (permanent failure)
  slow:SECS   wait SECS seconds before answering RCPT (a relay slower than the client's timeout)
"""

import asyncio
import itertools
import logging
import os
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.counter = itertools.count(1)

    def mode(self):
        try:
            with open(os.path.join(self.directory, "mode")) as f:
                return f.read().strip() or "ok"
        except FileNotFoundError:
            return "ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        mode = self.mode()
        if mode.startswith("slow:"):
            await asyncio.sleep(float(mode[5:]))
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        mode = self.mode()
        if mode == "451":
            return "451 4.3.0 try again later"
        if mode == "550":
            return "550 5.7.1 refused by policy"
        n = next(self.counter)
        final = os.path.join(self.directory, f"msg-{n:06d}.eml")
        tmp = final + ".tmp"
        with open(tmp, "wb") as f:
            f.write(envelope.content)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        return "250 Message accepted for delivery"


def main():
    # Sessions a test makes fail on purpose (a refused certificate) would log tracebacks.
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    port = int(sys.argv[1])
    directory = sys.argv[2]
    kwargs = {}
    if len(sys.argv) > 3:
        mode, cert, key = sys.argv[3], sys.argv[4], sys.argv[5]
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if mode == "starttls":
            kwargs = {"tls_context": context, "require_starttls": True}
        elif mode == "tls":
            kwargs = {"ssl_context": context}
        else:
            sys.exit(f"unknown TLS mode {mode!r}")
        if len(sys.argv) > 6:
            user, password = sys.argv[6].split(":", 1)

            def authenticator(server, session, envelope, mechanism, auth_data):
                ok = (
                    isinstance(auth_data, LoginPassword)
                    and auth_data.login.decode() == user
                    and auth_data.password.decode() == password
                )
                return AuthResult(success=ok, handled=False)

            kwargs.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller = Controller(Sink(directory), hostname="127.0.0.1", port=port, **kwargs)
    controller.start()
    print("ready", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
