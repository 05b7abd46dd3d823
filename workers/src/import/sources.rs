//! Reading legacy rows: a PostgreSQL table, a JSON store file, a CSV file or a JSON
//! Lines file. Every reader yields rows as `field → text`, only for the fields of the
//! source's [`Layout`] (renamed by `--column`), each with where it came from, so that a
//! bad row can be reported by its line or key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt;
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, Row as _};

use super::legacy::{Layout, Row};

/// Where a source's rows are.
#[derive(Debug, Clone)]
pub enum Location {
    /// A table (optionally `schema.table`) of a PostgreSQL database.
    Postgres {
        url: SecretString,
        table: String,
        /// The flag that gave the URL, for error messages (the URL itself may hold a
        /// password, so it is never shown).
        flag: &'static str,
    },
    /// A file: `.json` (a JSON store), `.jsonl`/`.ndjson` (JSON Lines) or `.csv`.
    File(PathBuf),
}

/// One source of legacy rows.
#[derive(Debug, Clone)]
pub struct Source {
    pub layout: Layout,
    pub location: Location,
}

impl Source {
    /// How reports name the source, e.g. `discord table users` or `old/tg.json`.
    pub fn describe(&self) -> String {
        match &self.location {
            Location::Postgres { table, .. } => {
                format!("{} table {table}", self.layout.label())
            }
            Location::File(path) => format!("{} file {}", self.layout.label(), path.display()),
        }
    }
}

/// A row and where it was read.
#[derive(Debug, Clone)]
pub struct Located {
    /// `line 7`, `key "1234"`, `item 3`, `row 12 (id 80351110224678912)`.
    pub at: String,
    pub row: Row,
}

/// `FIELD=COLUMN` renames: the column each field is read from.
#[derive(Debug, Clone, Default)]
pub struct Columns(HashMap<String, String>);

impl Columns {
    pub fn new(renames: HashMap<String, String>) -> Self {
        Self(
            renames
                .into_iter()
                .map(|(f, c)| (f, c.to_lowercase()))
                .collect(),
        )
    }

    /// The (lower-case) column `field` is read from.
    pub fn column<'a>(&'a self, field: &'a str) -> &'a str {
        self.0.get(field).map(String::as_str).unwrap_or(field)
    }

    /// Picks the layout's fields out of a record whose keys are lower-case columns.
    fn pick(&self, layout: Layout, record: &HashMap<String, Option<String>>) -> Row {
        layout
            .fields()
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    record.get(self.column(f)).cloned().flatten(),
                )
            })
            .collect()
    }
}

/// Reads every row of `source`. `Err` when the source cannot be read at all (missing
/// file or table, unreachable database, not CSV/JSON); a single bad row is not an error
/// here but a row the mapping refuses.
pub async fn read(source: &Source, columns: &Columns) -> anyhow::Result<Vec<Located>> {
    match &source.location {
        Location::Postgres { url, table, flag } => read_table(source.layout, url, table, columns)
            .await
            .with_context(|| format!("{} (--{flag})", source.describe())),
        Location::File(path) => {
            read_file(source.layout, path, columns).with_context(|| source.describe())
        }
    }
}

/// Quotes a table name, `table` or `schema.table`, each part an SQL identifier.
fn quote_table(table: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = table.split('.').collect();
    let identifier = |s: &str| {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
    };
    if !(1..=2).contains(&parts.len()) || !parts.iter().all(|p| identifier(p)) {
        bail!("table name {table:?} must be `table` or `schema.table` (letters, digits, _)");
    }
    Ok(parts
        .iter()
        .map(|p| format!("\"{p}\""))
        .collect::<Vec<_>>()
        .join("."))
}

fn quote_column(column: &str) -> String {
    format!("\"{}\"", column.replace('"', "\"\""))
}

async fn read_table(
    layout: Layout,
    url: &SecretString,
    table: &str,
    columns: &Columns,
) -> anyhow::Result<Vec<Located>> {
    let quoted = quote_table(table)?;
    let mut conn = PgConnection::connect(url.expose_secret())
        .await
        .map_err(|e| anyhow!("cannot connect to the database: {e}"))?;
    // The table's columns, by their lower-case names (as the mapping knows them).
    let present: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_attribute
         WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped",
    )
    .bind(&quoted)
    .fetch_all(&mut conn)
    .await?;
    if present.is_empty() {
        bail!("there is no table {table} in this database");
    }
    let by_lower: HashMap<String, &str> = present
        .iter()
        .map(|c| (c.to_lowercase(), c.as_str()))
        .collect();
    let key = columns.column(layout.key());
    let Some(key_column) = by_lower.get(key) else {
        bail!(
            "the table has no column {key} (the {} rows' key; rename with --column {}=<column>)",
            layout.label(),
            layout.key()
        );
    };
    // Only the layout's fields are selected: e-mails, coins, password hashes and the
    // rest never leave the old database.
    let mut select = Vec::new();
    for field in layout.fields() {
        if let Some(column) = by_lower.get(columns.column(field)) {
            select.push(format!(
                "{}::text AS {}",
                quote_column(column),
                quote_column(field)
            ));
        }
    }
    let sql = format!(
        "SELECT {} FROM {quoted} ORDER BY {}",
        select.join(", "),
        quote_column(key_column)
    );
    let mut rows = sqlx::query(&sql).fetch(&mut conn);
    let mut out = Vec::new();
    while let Some(r) = rows.try_next().await? {
        let mut row = Row::new();
        for field in layout.fields() {
            let value: Option<String> = r.try_get(*field).unwrap_or(None);
            row.insert((*field).to_owned(), value);
        }
        let key_value = row
            .get(layout.key())
            .cloned()
            .flatten()
            .unwrap_or_else(|| "NULL".into());
        out.push(Located {
            at: format!("row {} ({} {key_value})", out.len() + 1, layout.key()),
            row,
        });
    }
    Ok(out)
}

/// The format of a file, by its extension.
fn read_file(layout: Layout, path: &Path, columns: &Columns) -> anyhow::Result<Vec<Located>> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let text = std::fs::read_to_string(path).context("cannot read the file")?;
    match ext.as_str() {
        "csv" => read_csv(layout, &text, columns),
        "jsonl" | "ndjson" => read_json_lines(layout, &text, columns),
        "json" => read_json_store(layout, &text, columns),
        _ => bail!("unknown file type: name it .json (a JSON store), .jsonl or .csv"),
    }
}

fn read_csv(layout: Layout, text: &str, columns: &Columns) -> anyhow::Result<Vec<Located>> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers: Vec<String> = reader
        .headers()
        .context("no CSV header row")?
        .iter()
        .map(str::to_lowercase)
        .collect();
    if !headers.iter().any(|h| h == columns.column(layout.key())) {
        bail!(
            "the header row has no column {} (the rows' key)",
            columns.column(layout.key())
        );
    }
    let mut out = Vec::new();
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                // A malformed line (wrong number of fields, bad UTF-8) is a bad row:
                // reported by its line with an empty row, which the mapping refuses.
                let line = e.position().map(|p| p.line()).unwrap_or_default();
                out.push(Located {
                    at: format!("line {line}"),
                    row: Row::from([(String::from("!error"), Some(e.to_string()))]),
                });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or_default();
        let map: HashMap<String, Option<String>> = headers
            .iter()
            .cloned()
            .zip(record.iter().map(|v| Some(v.to_owned())))
            .collect();
        out.push(Located {
            at: format!("line {line}"),
            row: columns.pick(layout, &map),
        });
    }
    Ok(out)
}

fn read_json_lines(layout: Layout, text: &str, columns: &Columns) -> anyhow::Result<Vec<Located>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("line {}", n + 1);
        let row = serde_json::from_str::<serde_json::Value>(line)
            .map_err(|e| format!("not JSON: {e}"))
            .and_then(|v| object(&v, None, layout, columns));
        out.push(located(at, row));
    }
    Ok(out)
}

/// A JSON store: an array of objects, an object of objects keyed by the row key, or
/// either of them under a single top-level `users` or `accounts` key.
fn read_json_store(layout: Layout, text: &str, columns: &Columns) -> anyhow::Result<Vec<Located>> {
    let mut value: serde_json::Value = serde_json::from_str(text).context("not JSON")?;
    if let serde_json::Value::Object(map) = &mut value
        && map.len() == 1
        && let Some(inner) = map.remove("users").or_else(|| map.remove("accounts"))
    {
        value = inner;
    }
    let mut out = Vec::new();
    match &value {
        serde_json::Value::Array(items) => {
            for (n, item) in items.iter().enumerate() {
                out.push(located(
                    format!("item {}", n + 1),
                    object(item, None, layout, columns),
                ));
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                out.push(located(
                    format!("key {key:?}"),
                    object(item, Some(key), layout, columns),
                ));
            }
        }
        _ => bail!("a JSON store must be an array or an object of user objects"),
    }
    Ok(out)
}

fn located(at: String, row: Result<Row, String>) -> Located {
    let row = row.unwrap_or_else(|e| Row::from([(String::from("!error"), Some(e))]));
    Located { at, row }
}

/// One JSON object as a row; `key` (an object store's key) stands in for a missing key
/// field.
fn object(
    value: &serde_json::Value,
    key: Option<&str>,
    layout: Layout,
    columns: &Columns,
) -> Result<Row, String> {
    let serde_json::Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    let mut record: HashMap<String, Option<String>> = HashMap::new();
    for (k, v) in map {
        let text = match v {
            serde_json::Value::Null => None,
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => {
                // Nested values are fine in columns we do not read.
                record.insert(k.to_lowercase(), Some(String::from("!nested")));
                continue;
            }
        };
        record.insert(k.to_lowercase(), text);
    }
    let key_column = columns.column(layout.key()).to_owned();
    if let Some(key) = key {
        record
            .entry(key_column)
            .or_insert_with(|| Some(key.to_owned()));
    }
    let row = columns.pick(layout, &record);
    if let Some((field, _)) = row.iter().find(|(_, v)| v.as_deref() == Some("!nested")) {
        return Err(format!("{field} must be a string or a number"));
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(layout: Layout, name: &str, text: &str) -> Vec<Located> {
        let path = std::env::temp_dir().join(format!("ttfd-import-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("write");
        let out = read_file(layout, &path, &Columns::default()).expect("readable");
        let _ = std::fs::remove_file(path);
        out
    }

    #[test]
    fn json_stores_keyed_by_id_fill_the_key_from_the_object_key() {
        let out = rows(
            Layout::Discord,
            "a.json",
            r#"{"users": {"123": {"username": "a", "xp": 5}, "456": {"id": 456, "xp": null}}}"#,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].at, "key \"123\"");
        assert_eq!(out[0].row["id"].as_deref(), Some("123"));
        assert_eq!(out[0].row["xp"].as_deref(), Some("5"));
        assert_eq!(out[1].row["xp"], None);
    }

    #[test]
    fn csv_rows_are_read_by_header_and_located_by_line() {
        let out = rows(
            Layout::Telegram,
            "b.csv",
            "Telegram_ID,username,xp,coins\n1,a,10,99\n2,b,oops,1\n3,c\n",
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].at, "line 3");
        assert_eq!(out[1].row["xp"].as_deref(), Some("oops"));
        assert!(!out[1].row.contains_key("coins"), "coins are not read");
        assert!(
            out[2].row.contains_key("!error"),
            "a short line is a bad row"
        );
    }

    #[test]
    fn renamed_columns_are_read_under_their_field_names() {
        let path = std::env::temp_dir().join(format!("ttfd-import-{}-c.jsonl", std::process::id()));
        std::fs::write(&path, "{\"uuid\": \"abc\", \"points\": 7}\n\n[1]\n").expect("write");
        let columns = Columns::new(HashMap::from([
            ("user".to_owned(), "uuid".to_owned()),
            ("xp".to_owned(), "Points".to_owned()),
        ]));
        let out = read_file(Layout::Records, &path, &columns).expect("readable");
        let _ = std::fs::remove_file(path);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].row["user"].as_deref(), Some("abc"));
        assert_eq!(out[0].row["xp"].as_deref(), Some("7"));
        assert_eq!(out[1].at, "line 3");
        assert!(out[1].row.contains_key("!error"));
    }

    #[test]
    fn table_names_are_identifiers() {
        assert_eq!(quote_table("users").expect("ok"), "\"users\"");
        assert_eq!(quote_table("tg.users").expect("ok"), "\"tg\".\"users\"");
        assert!(quote_table("users; DROP TABLE x").is_err());
        assert!(quote_table("a.b.c").is_err());
    }
}
