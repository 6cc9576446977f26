"""Throwaway certificates for servers on loopback (tests and benchmarks): a CA and certificates it
signs for 127.0.0.1, EC P-256, valid two days, made by the openssl command."""

import shlex
import subprocess
import time
from pathlib import Path

EC = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"


def openssl(command: str, cwd: Path) -> None:
    subprocess.run(["openssl", *shlex.split(command)], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    """``name``.pem and ``name``.key: a self-signed CA."""
    openssl(f"req -x509 {EC} -keyout {name}.key -out {name}.pem -days 2 -subj /CN={name}", directory)


def issue(directory: Path, name: str, ca: str, usage: str) -> None:
    """``name``.pem and ``name``.key, a certificate for 127.0.0.1 signed by ``ca``; ``usage``:
    serverAuth or clientAuth."""
    (directory / f"{name}.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
    )
    openssl(f"req {EC} -keyout {name}.key -out {name}.csr -subj /CN={name}", directory)
    openssl(
        f"x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -set_serial {time.time_ns()} -days 2 "
        f"-out {name}.pem -extfile {name}.ext",
        directory,
    )
