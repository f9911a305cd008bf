"""A throwaway MariaDB server for system tests: ``mariadb-install-db`` into a directory (a btrfs
subvolume), ``mariadbd --no-defaults`` with the socket in a short private temp dir,
``--skip-networking``, binlog on, small InnoDB settings. Runs as root: pytest's temp dirs are not
searchable by the mysql user."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

MARIADBD = shutil.which("mariadbd", path=os.environ.get("PATH", "") + ":/usr/sbin") or "/usr/sbin/mariadbd"
INSTALL_DB = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
SMALL = ["--innodb-log-file-size=8M", "--innodb-buffer-pool-size=32M", "--max-connections=40"]


def available() -> bool:
    return os.path.exists(MARIADBD) and os.path.exists(INSTALL_DB)


class MariaDB:
    """One server on ``datadir``; ``start()``/``stop()``/``connect()``."""

    def __init__(self, datadir: Path, log_bin: bool = True, extra: list[str] | None = None, user: str = "root"):
        self.datadir = Path(datadir)
        self.rundir = Path(tempfile.mkdtemp(prefix="sa-my-"))
        self.socket = str(self.rundir / "mysqld.sock")
        self.errlog = self.rundir / "error.log"
        self.log_bin = log_bin
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None
        self.user = user
        if user != "root":
            shutil.chown(self.rundir, user, user)

    def install(self) -> None:
        # mariadb-install-db is a shell script that breaks on paths with spaces: install into a
        # plain temp dir, then copy the fresh datadir into place
        fresh = Path(tempfile.mkdtemp(prefix="sa-myinst-")) / "d"
        try:
            r = subprocess.run([INSTALL_DB, "--no-defaults", f"--datadir={fresh}", "--user=root",
                                "--auth-root-authentication-method=socket", "--skip-test-db", *SMALL],
                               capture_output=True, text=True, timeout=180)
            if r.returncode != 0:
                raise RuntimeError(f"mariadb-install-db failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
            shutil.copytree(fresh, self.datadir, dirs_exist_ok=True)
        finally:
            shutil.rmtree(fresh.parent, ignore_errors=True)

    def argv(self) -> list[str]:
        argv = [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
                f"--pid-file={self.datadir / 'mysqld.pid'}", "--skip-networking", f"--user={self.user}",
                f"--log-error={self.errlog}", "--server-id=7", *SMALL, *self.extra]
        if self.log_bin:
            argv.append(f"--log-bin={self.datadir / 'mysql-bin'}")
        return argv

    def start(self, timeout: float = 120) -> "MariaDB":
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mariadbd exited {self.proc.returncode}: {self.log_tail()}")
            try:
                self.connect().close()
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError(f"mariadbd did not start in {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.errlog.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return "(no error log)"

    def connect(self, **kw):
        import pymysql

        return pymysql.connect(unix_socket=self.socket, user="root", autocommit=True, connect_timeout=5, **kw)

    def sql(self, statement: str, args=None) -> list[tuple]:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return list(cur.fetchall() or [])
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.sql("SHUTDOWN")
            except Exception:  # noqa: BLE001
                self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.rundir, ignore_errors=True)
