//! What a dump contains, read in the dump's own snapshot: schemas, tables and their row
//! counts, large objects. Also the schema/table filters, resolved to exact names so that
//! pg_dump dumps exactly the tables the stats describe.

use drkit_core::{Error, Result};
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::conn::{pg_error, quote_ident, ConnParams};

/// How row counts are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsMode {
    /// `count(*)` of every table, in the dump's snapshot.
    #[default]
    Exact,
    /// The planner's estimate (`pg_class.reltuples`): fast on very large databases, but a
    /// restore can then only check that the tables exist.
    Estimate,
}

/// One name pattern, as pg_dump and psql write them: `*` matches any text, `?` one
/// character, letters are folded to lower case unless double-quoted, and `.` separates a
/// schema from a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    schema: Option<Vec<Tok>>,
    name: Vec<Tok>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Lit(char),
    Any,
    One,
}

impl Pattern {
    /// Read a pattern; `qualified` allows a `schema.` part (table patterns).
    pub fn parse(text: &str, qualified: bool) -> std::result::Result<Pattern, String> {
        let mut parts: Vec<Vec<Tok>> = vec![Vec::new()];
        let mut chars = text.chars().peekable();
        let mut quoted = false;
        while let Some(c) = chars.next() {
            let cur = parts.last_mut().expect("one part at least");
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push(Tok::Lit('"'));
                }
                '"' => quoted = !quoted,
                _ if quoted => cur.push(Tok::Lit(c)),
                '*' => cur.push(Tok::Any),
                '?' => cur.push(Tok::One),
                '.' => parts.push(Vec::new()),
                _ => cur.extend(c.to_lowercase().map(Tok::Lit)),
            }
        }
        if quoted {
            return Err(format!("pattern {text:?} has an unclosed double quote"));
        }
        if parts.iter().any(Vec::is_empty) {
            return Err(format!("pattern {text:?} has an empty part"));
        }
        match (parts.len(), qualified) {
            (1, _) => Ok(Pattern {
                schema: None,
                name: parts.remove(0),
                text: text.to_string(),
            }),
            (2, true) => {
                let name = parts.remove(1);
                Ok(Pattern {
                    schema: Some(parts.remove(0)),
                    name,
                    text: text.to_string(),
                })
            }
            _ => {
                Err(format!(
                "pattern {text:?} has too many dots (write {} and quote names that contain a dot)",
                if qualified { "schema.table" } else { "a schema name" }
            ))
            }
        }
    }

    /// Whether a schema name matches (schema patterns).
    pub fn matches_schema(&self, schema: &str) -> bool {
        glob(&self.name, schema)
    }

    /// Whether a table matches (table patterns; without a schema part, any schema).
    pub fn matches_table(&self, schema: &str, table: &str) -> bool {
        self.schema.as_ref().is_none_or(|s| glob(s, schema)) && glob(&self.name, table)
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }
}

fn glob(pat: &[Tok], s: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        match pat.get(p) {
            Some(Tok::Lit(c)) if *c == s[i] => {
                p += 1;
                i += 1;
            }
            Some(Tok::One) => {
                p += 1;
                i += 1;
            }
            Some(Tok::Any) => {
                star = Some((p, i));
                p += 1;
            }
            _ => match star {
                Some((sp, si)) => {
                    p = sp + 1;
                    i = si + 1;
                    star = Some((sp, si + 1));
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|t| *t == Tok::Any)
}

/// The job's include/exclude filters.
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// Only these schemas (pg_dump `--schema`).
    pub schemas: Vec<Pattern>,
    /// Not these schemas.
    pub exclude_schemas: Vec<Pattern>,
    /// Only these tables (and no other object).
    pub tables: Vec<Pattern>,
    /// Not these tables.
    pub exclude_tables: Vec<Pattern>,
}

impl Filters {
    /// Read the four lists of patterns; errors name `what`.
    pub fn parse(
        schemas: &[String],
        exclude_schemas: &[String],
        tables: &[String],
        exclude_tables: &[String],
        what: &str,
    ) -> Result<Filters> {
        let list = |v: &[String], qualified: bool, key: &str| -> Result<Vec<Pattern>> {
            v.iter()
                .map(|t| {
                    Pattern::parse(t, qualified)
                        .map_err(|e| Error::config(format!("{what}.{key}: {e}")))
                })
                .collect()
        };
        Ok(Filters {
            schemas: list(schemas, false, "schemas")?,
            exclude_schemas: list(exclude_schemas, false, "exclude_schemas")?,
            tables: list(tables, true, "tables")?,
            exclude_tables: list(exclude_tables, true, "exclude_tables")?,
        })
    }

    /// Whether the database is dumped as a whole, maybe minus some schemas or tables (no
    /// `tables` filter): large objects are then part of the dump, as with pg_dump.
    pub fn whole_database(&self) -> bool {
        self.tables.is_empty()
    }

    /// Whether any filter is set.
    pub fn any(&self) -> bool {
        !(self.whole_database()
            && self.exclude_schemas.is_empty()
            && self.exclude_tables.is_empty())
    }
}

/// A table of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableName {
    /// Its schema.
    pub schema: String,
    /// Its name.
    pub name: String,
}

/// What a dump of one database contains, resolved to exact names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// The schemas whose objects are dumped.
    pub schemas: Vec<String>,
    /// The tables whose rows are dumped.
    pub tables: Vec<TableName>,
    /// pg_dump's selection arguments (`--schema`, `--table`, ... with exact quoted names).
    pub args: Vec<String>,
    /// Whether large objects are dumped.
    pub large_objects: bool,
}

/// A name quoted for a pg_dump pattern argument (an exact match).
fn exact(name: &str) -> String {
    quote_ident(name)
}

/// Resolve `filters` against a database's `schemas` and `tables` (user schemas and ordinary
/// tables). An include pattern that matches nothing is an error: it is almost always a typo,
/// and a dump of nothing would look like a success.
pub fn select(
    schemas: &[String],
    tables: &[TableName],
    filters: &Filters,
    db: &str,
) -> Result<Selection> {
    for p in &filters.schemas {
        if !schemas.iter().any(|s| p.matches_schema(s)) {
            return Err(Error::config(format!(
                "schemas: pattern {:?} matches no schema in database {db:?} (it has: {})",
                p.text(),
                list_or_none(schemas)
            )));
        }
    }
    for p in &filters.tables {
        if !tables.iter().any(|t| p.matches_table(&t.schema, &t.name)) {
            return Err(Error::config(format!(
                "tables: pattern {:?} matches no table in database {db:?}",
                p.text()
            )));
        }
    }
    let schema_in = |s: &str| {
        (filters.schemas.is_empty() || filters.schemas.iter().any(|p| p.matches_schema(s)))
            && !filters.exclude_schemas.iter().any(|p| p.matches_schema(s))
    };
    let table_excluded = |t: &TableName| {
        filters
            .exclude_tables
            .iter()
            .any(|p| p.matches_table(&t.schema, &t.name))
    };
    let mut sel = Selection {
        large_objects: filters.whole_database(),
        ..Selection::default()
    };
    if !filters.tables.is_empty() {
        sel.tables = tables
            .iter()
            .filter(|t| schema_in(&t.schema) && !table_excluded(t))
            .filter(|t| {
                filters
                    .tables
                    .iter()
                    .any(|p| p.matches_table(&t.schema, &t.name))
            })
            .cloned()
            .collect();
        if sel.tables.is_empty() {
            return Err(Error::config(format!(
                "the job's filters leave no table to dump in database {db:?}: check tables, schemas and the excludes"
            )));
        }
        sel.schemas = sel.tables.iter().map(|t| t.schema.clone()).collect();
        sel.schemas.dedup();
        for t in &sel.tables {
            sel.args
                .push(format!("--table={}.{}", exact(&t.schema), exact(&t.name)));
        }
        return Ok(sel);
    }
    // Schemas are selected by excluding the others (never with --schema): pg_dump then
    // dumps the database as a whole minus those schemas, so it keeps the extensions and
    // large objects and does not emit a CREATE SCHEMA public that fails on restore.
    sel.schemas = schemas.iter().filter(|s| schema_in(s)).cloned().collect();
    if sel.schemas.is_empty() && !filters.schemas.is_empty() {
        return Err(Error::config(format!(
            "the job's filters leave no schema to dump in database {db:?}: check schemas and exclude_schemas"
        )));
    }
    for s in schemas.iter().filter(|s| !schema_in(s)) {
        sel.args.push(format!("--exclude-schema={}", exact(s)));
    }
    for t in tables.iter().filter(|t| schema_in(&t.schema)) {
        if table_excluded(t) {
            sel.args.push(format!(
                "--exclude-table={}.{}",
                exact(&t.schema),
                exact(&t.name)
            ));
        } else {
            sel.tables.push(t.clone());
        }
    }
    Ok(sel)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// One table in the stats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableStats {
    /// Schema.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// Rows: exact, or the planner's estimate (`null` when the table was never analyzed).
    pub rows: Option<i64>,
}

/// The stats of one database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStats {
    /// Database name.
    pub name: String,
    /// `pg_database_size` in bytes.
    pub size_bytes: i64,
    /// Encoding (`UTF8`).
    pub encoding: String,
    /// `LC_COLLATE`.
    pub collate: String,
    /// `LC_CTYPE`.
    pub ctype: String,
    /// Owner of the database.
    pub owner: String,
    /// Dumped schemas.
    pub schemas: Vec<String>,
    /// Dumped tables with their rows.
    pub tables: Vec<TableStats>,
    /// Large objects dumped (`null` when the filters leave them out).
    pub large_objects: Option<i64>,
}

/// The manifest's `stats` of a PostgreSQL backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// `exact` or `estimate`.
    pub row_counts: StatsMode,
    /// Per database, in dump order.
    pub databases: Vec<DbStats>,
    /// Tables over all databases.
    pub table_count: usize,
    /// Rows over all databases (estimates summed in `estimate` mode).
    pub rows: i64,
    /// Large objects over all databases.
    pub large_objects: i64,
    /// No table and no large object in any database: nothing to restore.
    pub empty: bool,
}

impl Stats {
    /// Totals over `databases`.
    pub fn new(mode: StatsMode, databases: Vec<DbStats>) -> Stats {
        let table_count = databases.iter().map(|d| d.tables.len()).sum();
        let rows = databases
            .iter()
            .flat_map(|d| &d.tables)
            .filter_map(|t| t.rows)
            .map(|r| r.max(0))
            .sum();
        let large_objects = databases.iter().filter_map(|d| d.large_objects).sum();
        Stats {
            row_counts: mode,
            empty: table_count == 0 && large_objects == 0,
            databases,
            table_count,
            rows,
            large_objects,
        }
    }

    /// The warnings a later check should flag: an empty database, or tables that are all
    /// empty.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for d in &self.databases {
            if d.tables.is_empty() && d.large_objects.unwrap_or(0) == 0 {
                out.push(format!(
                    "database {:?} has no tables: the backup holds no data",
                    d.name
                ));
            } else if self.row_counts == StatsMode::Exact
                && d.large_objects.unwrap_or(0) == 0
                && d.tables.iter().all(|t| t.rows == Some(0))
            {
                out.push(format!(
                    "database {:?} has {} tables but no rows in any of them",
                    d.name,
                    d.tables.len()
                ));
            }
        }
        out
    }
}

/// System schemas, never dumped nor counted.
pub const SYSTEM_SCHEMAS_SQL: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'";

/// The user schemas and ordinary tables of the current database (tables that belong to an
/// extension are left out: pg_dump does not dump their rows).
pub async fn read_catalog(
    client: &Client,
    params: &ConnParams,
) -> Result<(Vec<String>, Vec<TableName>)> {
    let err = |e: tokio_postgres::Error| pg_error(&e, params, "reading the catalog");
    let schemas = client
        .query(
            &format!(
                "SELECT n.nspname::text FROM pg_namespace n WHERE {SYSTEM_SCHEMAS_SQL} ORDER BY 1"
            ),
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let tables = client
        .query(
            &format!(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind = 'r' AND c.relpersistence <> 't' AND {SYSTEM_SCHEMAS_SQL} \
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e') \
                 ORDER BY 1, 2"
            ),
            &[],
        )
        .await
        .map_err(err)?
        .iter()
        .map(|r| TableName { schema: r.get(0), name: r.get(1) })
        .collect();
    Ok((schemas, tables))
}

/// Facts about the current database: (size, encoding, collate, ctype, owner).
pub async fn database_facts(
    client: &Client,
    params: &ConnParams,
) -> Result<(i64, String, String, String, String)> {
    let row = client
        .query_one(
            "SELECT pg_database_size(d.oid), pg_encoding_to_char(d.encoding)::text, d.datcollate::text, d.datctype::text, pg_get_userbyid(d.datdba)::text \
             FROM pg_database d WHERE d.datname = current_database()",
            &[],
        )
        .await
        .map_err(|e| pg_error(&e, params, "reading the database's size"))?;
    Ok((row.get(0), row.get(1), row.get(2), row.get(3), row.get(4)))
}

/// Row counts of `tables`: exact `count(*)` (in the caller's transaction), or estimates.
pub async fn count_rows(
    client: &Client,
    params: &ConnParams,
    tables: &[TableName],
    mode: StatsMode,
) -> Result<Vec<TableStats>> {
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        let qualified = format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name));
        let rows = match mode {
            StatsMode::Exact => {
                let row = client
                    .query_one(&format!("SELECT count(*) FROM ONLY {qualified}"), &[])
                    .await
                    .map_err(|e| {
                        pg_error(&e, params, &format!("counting the rows of {qualified}"))
                    })?;
                Some(row.get::<_, i64>(0))
            }
            StatsMode::Estimate => {
                let row = client
                    .query_one(
                        &format!(
                            "SELECT reltuples::float8 FROM pg_class WHERE oid = '{}'::regclass",
                            qualified.replace('\'', "''")
                        ),
                        &[],
                    )
                    .await
                    .map_err(|e| {
                        pg_error(&e, params, &format!("reading the size of {qualified}"))
                    })?;
                let est: f64 = row.get(0);
                (est >= 0.0).then_some(est.round() as i64)
            }
        };
        out.push(TableStats {
            schema: t.schema.clone(),
            name: t.name.clone(),
            rows,
        });
    }
    Ok(out)
}

/// The number of large objects of the current database.
pub async fn count_large_objects(client: &Client, params: &ConnParams) -> Result<i64> {
    let row = client
        .query_one("SELECT count(*) FROM pg_largeobject_metadata", &[])
        .await
        .map_err(|e| pg_error(&e, params, "counting large objects"))?;
    Ok(row.get(0))
}

/// Compare the restored database's stats with the manifest's: the differences, in words.
pub fn differences(
    want: &DbStats,
    got_tables: &[TableStats],
    got_large_objects: Option<i64>,
    mode: StatsMode,
) -> Vec<String> {
    let mut out = Vec::new();
    for t in &want.tables {
        let found = got_tables
            .iter()
            .find(|g| g.schema == t.schema && g.name == t.name);
        match (found, mode) {
            (None, _) => out.push(format!("table {}.{} is missing", t.schema, t.name)),
            (Some(g), StatsMode::Exact) if g.rows != t.rows => out.push(format!(
                "table {}.{} has {} rows, the backup has {}",
                t.schema,
                t.name,
                g.rows.unwrap_or(-1),
                t.rows.unwrap_or(-1)
            )),
            _ => {}
        }
    }
    if let (Some(w), Some(g)) = (want.large_objects, got_large_objects) {
        if w != g {
            out.push(format!("{g} large objects, the backup has {w}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str, n: &str) -> TableName {
        TableName {
            schema: s.into(),
            name: n.into(),
        }
    }

    #[test]
    fn patterns() {
        let cases: &[(&str, &str, &str, bool)] = &[
            ("orders", "public", "orders", true),
            ("orders", "sales", "orders", true),
            ("Orders", "public", "orders", true),
            ("\"Orders\"", "public", "orders", false),
            ("\"Orders\"", "public", "Orders", true),
            ("public.ord*", "public", "orders", true),
            ("public.ord*", "sales", "orders", false),
            ("*.log_?", "x", "log_1", true),
            ("*.log_?", "x", "log_12", false),
            ("\"a.b\"", "s", "a.b", true),
            ("\"we\"\"ird\"", "s", "we\"ird", true),
            ("a*b*c", "s", "axxbyyc", true),
            ("a*b*c", "s", "axxbyy", false),
            ("*", "s", "", true),
        ];
        for (pat, schema, table, want) in cases {
            let p = Pattern::parse(pat, true).unwrap();
            assert_eq!(
                p.matches_table(schema, table),
                *want,
                "{pat} vs {schema}.{table}"
            );
        }
        for bad in ["a.b.c", "\"open", "a..b", ""] {
            assert!(Pattern::parse(bad, true).is_err(), "{bad}");
        }
        assert!(Pattern::parse("a.b", false).is_err());
    }

    fn filters(s: &[&str], xs: &[&str], tb: &[&str], xt: &[&str]) -> Filters {
        let v = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Filters::parse(&v(s), &v(xs), &v(tb), &v(xt), "job.x.source").unwrap()
    }

    #[test]
    fn selections() {
        let schemas = vec!["audit".to_string(), "public".to_string()];
        let tables = vec![
            t("audit", "log"),
            t("public", "orders"),
            t("public", "users"),
        ];
        let all = select(&schemas, &tables, &Filters::default(), "app").unwrap();
        assert_eq!(all.tables.len(), 3);
        assert!(all.args.is_empty() && all.large_objects);
        assert!(
            !select(
                &schemas,
                &tables,
                &filters(&[], &[], &["orders"], &[]),
                "app"
            )
            .unwrap()
            .large_objects
        );

        let only_public = select(
            &schemas,
            &tables,
            &filters(&["public"], &[], &[], &[]),
            "app",
        )
        .unwrap();
        assert_eq!(
            only_public.tables,
            vec![t("public", "orders"), t("public", "users")]
        );
        assert_eq!(only_public.args, vec!["--exclude-schema=\"audit\""]);
        assert!(only_public.large_objects);

        let no_audit = select(
            &schemas,
            &tables,
            &filters(&[], &["audit"], &[], &["users"]),
            "app",
        )
        .unwrap();
        assert_eq!(no_audit.tables, vec![t("public", "orders")]);
        assert_eq!(
            no_audit.args,
            vec![
                "--exclude-schema=\"audit\"",
                "--exclude-table=\"public\".\"users\""
            ]
        );
        assert!(no_audit.large_objects);

        let some_tables = select(
            &schemas,
            &tables,
            &filters(&[], &[], &["o*", "audit.*"], &[]),
            "app",
        )
        .unwrap();
        assert_eq!(
            some_tables.tables,
            vec![t("audit", "log"), t("public", "orders")]
        );
        assert_eq!(some_tables.schemas, vec!["audit", "public"]);
        assert_eq!(
            some_tables.args,
            vec!["--table=\"audit\".\"log\"", "--table=\"public\".\"orders\""]
        );

        for (f, want) in [
            (filters(&["nope"], &[], &[], &[]), "matches no schema"),
            (filters(&[], &[], &["nope"], &[]), "matches no table"),
            (
                filters(&[], &[], &["orders"], &["orders"]),
                "leave no table",
            ),
        ] {
            let e = select(&schemas, &tables, &f, "app").unwrap_err();
            assert_eq!(e.kind(), drkit_core::ErrorKind::Config);
            assert!(e.to_string().contains(want), "{e}");
        }
    }

    fn db(tables: &[(&str, Option<i64>)], lo: Option<i64>) -> DbStats {
        DbStats {
            name: "app".into(),
            size_bytes: 1,
            encoding: "UTF8".into(),
            collate: "C".into(),
            ctype: "C".into(),
            owner: "o".into(),
            schemas: vec!["public".into()],
            tables: tables
                .iter()
                .map(|(n, r)| TableStats {
                    schema: "public".into(),
                    name: n.to_string(),
                    rows: *r,
                })
                .collect(),
            large_objects: lo,
        }
    }

    #[test]
    fn stats_and_warnings() {
        let empty = Stats::new(StatsMode::Exact, vec![db(&[], Some(0))]);
        assert!(empty.empty);
        assert_eq!(
            empty.warnings(),
            vec!["database \"app\" has no tables: the backup holds no data"]
        );
        let zero_rows = Stats::new(StatsMode::Exact, vec![db(&[("a", Some(0))], Some(0))]);
        assert!(!zero_rows.empty);
        assert_eq!(zero_rows.warnings().len(), 1);
        let full = Stats::new(
            StatsMode::Exact,
            vec![db(&[("a", Some(3)), ("b", Some(4))], Some(2))],
        );
        assert_eq!(
            (full.rows, full.table_count, full.large_objects, full.empty),
            (7, 2, 2, false)
        );
        assert!(full.warnings().is_empty());
        let blobs_only = Stats::new(StatsMode::Exact, vec![db(&[], Some(2))]);
        assert!(!blobs_only.empty);
    }

    #[test]
    fn diffs() {
        let want = db(&[("a", Some(3)), ("b", Some(4))], Some(2));
        let same = want.tables.clone();
        assert!(differences(&want, &same, Some(2), StatsMode::Exact).is_empty());
        let mut changed = same.clone();
        changed[1].rows = Some(5);
        changed.remove(0);
        let d = differences(&want, &changed, Some(1), StatsMode::Exact);
        assert_eq!(
            d,
            vec![
                "table public.a is missing",
                "table public.b has 5 rows, the backup has 4",
                "1 large objects, the backup has 2",
            ]
        );
        assert_eq!(
            differences(
                &want,
                &[
                    changed[0].clone(),
                    TableStats {
                        schema: "public".into(),
                        name: "a".into(),
                        rows: None
                    }
                ],
                Some(2),
                StatsMode::Estimate
            ),
            Vec::<String>::new()
        );
    }
}
