"""PostgreSQL: schema, migrations, repository and leadership."""
