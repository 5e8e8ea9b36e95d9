"""The only package that imports sqlalchemy, aiosqlite or alembic."""
