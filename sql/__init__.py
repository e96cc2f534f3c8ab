"""DuckDB SQL models: staging/ -> features/ -> marts/, plus sources/ for custom source readers."""
