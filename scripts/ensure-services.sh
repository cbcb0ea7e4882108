#!/usr/bin/env bash
# What the test suite needs from the machine, set up where it can be: the local PostgreSQL and
# MariaDB servers answering (started again the way the machine starts them, if down), and
# PgBouncer installed (Debian's package, as root). Otherwise it says what is missing; the tests
# that need it then skip locally and fail under CI=true.
set -uo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
root() { [ "$(id -u)" -eq 0 ]; }

if have pg_isready && ! pg_isready -h 127.0.0.1 -p 5432 -q && root && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start || true
fi

mariadb_up() { mariadb-admin --host=127.0.0.1 --port=3306 --user=root ping >/dev/null 2>&1; }
if have mariadb-admin && [ -x /usr/sbin/mariadbd ] && ! mariadb_up && root; then
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
    for _ in $(seq 60); do
        mariadb_up && break
        sleep 0.5
    done
fi

if ! have pgbouncer; then
    if root && have apt-get; then
        echo "installing pgbouncer (Debian's package) for the test suite"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    else
        echo "the PgBouncer tests need pgbouncer: sudo apt-get install pgbouncer" >&2
    fi
fi
exit 0
