#!/usr/bin/env python3
"""startup.py: start-up time of a server, for scripts/bench.sh.

Starts COMMAND, then asks https://127.0.0.1:PORT/healthz (trusting CA) every millisecond
until it answers 200, prints the milliseconds from the spawn to that answer, and stops the
server with SIGTERM. Repeats --runs times and prints one number per run.

    startup.py --port P --cacert ca.crt [--runs 5] [--timeout 10] -- COMMAND ARGS...

The server's stderr goes to --log (default /dev/null). Bounded: each run gives up after
--timeout seconds.
"""

import argparse
import http.client
import signal
import ssl
import subprocess
import sys
import time


def answered(port, context):
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=1)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cacert", required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--log", default="/dev/null")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command")
    context = ssl.create_default_context(cafile=args.cacert)
    context.check_hostname = False  # the certificate names 127.0.0.1 as an IP SAN anyway
    with open(args.log, "ab") as log:
        for _ in range(args.runs):
            started = time.monotonic()
            server = subprocess.Popen(command, stdout=log, stderr=log)
            try:
                while not answered(args.port, context):
                    if server.poll() is not None:
                        sys.exit(f"startup.py: the server exited with {server.returncode}")
                    if time.monotonic() - started > args.timeout:
                        sys.exit("startup.py: no answer from /healthz in time")
                    time.sleep(0.001)
                print(f"{(time.monotonic() - started) * 1000:.1f}", flush=True)
            finally:
                server.send_signal(signal.SIGTERM)
                try:
                    server.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()


if __name__ == "__main__":
    main()
