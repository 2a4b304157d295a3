"""Create the shop platform's tables and rows (platform.sql) in the database the
example's config names: what the platform would have done before reconciler arrives.

    python examples/catalogues/product-images/setup_platform.py

It uses reconciler's library to find (and, for the embedded default, start) the
database; against a server of yours, ``psql -f platform.sql`` does the same.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reconciler.config import load_settings
from reconciler.store.db import open_database

HERE = Path(__file__).resolve().parent


def main() -> int:
    settings = load_settings(flags={}, env=None, config_path=str(HERE / "reconciler.yaml"))
    with open_database(settings.database, settings.state_dir, create=True) as db:
        with db.conn.cursor() as cur:
            cur.execute("SELECT to_regclass('products') IS NOT NULL")
            if cur.fetchone()[0]:
                print("The platform's tables are there already.")
                return 0
            cur.execute((HERE / "platform.sql").read_text("utf-8"))
        db.conn.commit()
    print(f"Created the platform's tables and rows in {db.display}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
