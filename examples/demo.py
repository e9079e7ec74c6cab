"""`make demo`: start the demo subject, audit its tree with crwatch, stop it."""
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CRWATCH = Path(sys.executable).with_name("crwatch")

subject = subprocess.Popen([sys.executable, str(HERE / "demo_subject.py")], stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
try:
    pid, kid = subject.stdout.readline().decode().split()
    subject.stdout.close()
    # --network-lock nftables: what a host without iptables needs for the TCP connection.
    for arguments in ([pid], ["--only", "--allow=--tcp-established", "--allow=--file-locks",
                              "--allow=--ghost-limit=4M", "--allow=--network-lock=nftables", pid]):
        print(f"$ crwatch check {' '.join(arguments)}", flush=True)
        status = subprocess.run([str(CRWATCH), "check", *arguments]).returncode
        print(f"(exit status {status})\n", flush=True)
finally:
    os.killpg(subject.pid, signal.SIGKILL)  # the subject and its worker
    subject.wait()
