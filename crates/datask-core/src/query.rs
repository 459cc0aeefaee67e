//! The task query of the first seed's dialect (`list/task`): conditions,
//! order, limit and offset over a fixed list of fields.
//!
//! Fields map to fixed SQL expressions that both stores' `tasks` tables
//! share; values are always bound parameters. Nothing a client sends
//! becomes SQL text.

/// A field of the query dialect. Times are unix seconds; `status` is the
/// numeric status (0 New … 4 Fatal, 5 Cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Id,
    Identifier,
    Status,
    Desc,
    CreateTime,
    StartTime,
    FinishTime,
    LastModified,
    Result,
    Attempts,
    Version,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Integer,
    Text,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::Id,
        Field::Identifier,
        Field::Status,
        Field::Desc,
        Field::CreateTime,
        Field::StartTime,
        Field::FinishTime,
        Field::LastModified,
        Field::Result,
        Field::Attempts,
        Field::Version,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Identifier => "identifier",
            Field::Status => "status",
            Field::Desc => "desc",
            Field::CreateTime => "create_time",
            Field::StartTime => "start_time",
            Field::FinishTime => "finish_time",
            Field::LastModified => "last_modified",
            Field::Result => "result",
            Field::Attempts => "attempts",
            Field::Version => "version",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn ty(self) -> FieldType {
        match self {
            Field::Identifier | Field::Desc | Field::Result => FieldType::Text,
            _ => FieldType::Integer,
        }
    }

    /// The SQL expression the field stands for. Fixed text, the same on
    /// SQLite and PostgreSQL.
    pub fn sql(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Identifier => "identifier",
            Field::Status => {
                "(CASE state WHEN 'READY' THEN 0 WHEN 'INPROGRESS' THEN 1 WHEN 'DONE' THEN 2 \
                 WHEN 'ERROR' THEN 3 WHEN 'FATAL' THEN 4 ELSE 5 END)"
            }
            Field::Desc => "\"desc\"",
            Field::CreateTime => "(created_at / 1000000)",
            Field::StartTime => "(started_at / 1000000)",
            Field::FinishTime => "(finished_at / 1000000)",
            Field::LastModified => "(modified_at / 1000000)",
            // The file's name as the API shows it: the stored key after its
            // last '/' (rtrim strips the last segment, whose characters all
            // occur in the key less its slashes; the same on both stores).
            // Comparing the key itself would find nothing by the shown name
            // and order by tenant and task ids instead.
            Field::Result => "replace(result, rtrim(result, replace(result, '/', '')), '')",
            Field::Attempts => "attempts",
            Field::Version => "version",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    NotIn,
}

impl Op {
    pub const NAMES: [&'static str; 8] = ["=", "!=", "<", "<=", ">", ">=", "in", "not in"];

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "=" | "==" => Op::Eq,
            "!=" | "<>" => Op::Ne,
            "<" => Op::Lt,
            "<=" => Op::Le,
            ">" => Op::Gt,
            ">=" => Op::Ge,
            "in" => Op::In,
            "not in" => Op::NotIn,
            _ => return None,
        })
    }

    fn sql(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "<>",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "IN",
            Op::NotIn => "NOT IN",
        }
    }
}

/// A bound value.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Null,
    One(Param),
    List(Vec<Param>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub field: Field,
    pub op: Op,
    pub value: Operand,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskQuery {
    pub conditions: Vec<Condition>,
    /// (field, descending)
    pub order: Vec<(Field, bool)>,
    pub limit: i64,
    pub offset: i64,
}

impl TaskQuery {
    /// `WHERE`-clause terms joined by AND, and `ORDER BY` terms, with
    /// placeholders from `placeholder(n)` numbered from `first`; answers the
    /// SQL pieces and the parameters in order.
    pub fn to_sql(
        &self,
        first: usize,
        placeholder: impl Fn(usize) -> String,
    ) -> (String, String, Vec<Param>) {
        let mut params = Vec::new();
        let mut terms = Vec::new();
        let next = |p: Param, params: &mut Vec<Param>| {
            params.push(p);
            placeholder(first + params.len() - 1)
        };
        for c in &self.conditions {
            let expr = c.field.sql();
            let term = match (&c.value, c.op) {
                (Operand::Null, Op::Eq) => format!("{expr} IS NULL"),
                (Operand::Null, _) => format!("{expr} IS NOT NULL"),
                (Operand::One(p), op) => {
                    format!("{expr} {} {}", op.sql(), next(p.clone(), &mut params))
                }
                (Operand::List(items), op) if items.is_empty() => {
                    // x IN () is never true; x NOT IN () always.
                    if op == Op::In {
                        "1 = 0".to_string()
                    } else {
                        "1 = 1".to_string()
                    }
                }
                (Operand::List(items), op) => {
                    let phs: Vec<String> =
                        items.iter().map(|p| next(p.clone(), &mut params)).collect();
                    format!("{expr} {} ({})", op.sql(), phs.join(", "))
                }
            };
            terms.push(term);
        }
        let mut order: Vec<String> = self
            .order
            .iter()
            .map(|(f, desc)| format!("{} {}", f.sql(), if *desc { "DESC" } else { "ASC" }))
            .collect();
        // A stable order for paging.
        if !self.order.iter().any(|(f, _)| *f == Field::Id) {
            order.push("id DESC".into());
        }
        let where_sql = if terms.is_empty() {
            "1 = 1".to_string()
        } else {
            terms.join(" AND ")
        };
        (where_sql, order.join(", "), params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_is_made_of_fixed_pieces_and_placeholders() {
        let q = TaskQuery {
            conditions: vec![
                Condition {
                    field: Field::Identifier,
                    op: Op::Eq,
                    value: Operand::One(Param::Text("id; DROP TABLE tasks".into())),
                },
                Condition {
                    field: Field::FinishTime,
                    op: Op::Gt,
                    value: Operand::One(Param::Int(1_580_226_128)),
                },
                Condition {
                    field: Field::Status,
                    op: Op::In,
                    value: Operand::List(vec![Param::Int(2), Param::Int(3)]),
                },
                Condition {
                    field: Field::Result,
                    op: Op::Ne,
                    value: Operand::Null,
                },
            ],
            order: vec![(Field::CreateTime, true)],
            limit: 10,
            offset: 0,
        };
        let (w, o, p) = q.to_sql(2, |n| format!("${n}"));
        assert_eq!(
            w,
            format!(
                "identifier = $2 AND (finished_at / 1000000) > $3 AND (CASE state WHEN 'READY' THEN 0 WHEN 'INPROGRESS' THEN 1 \
                 WHEN 'DONE' THEN 2 WHEN 'ERROR' THEN 3 WHEN 'FATAL' THEN 4 ELSE 5 END) IN ($4, $5) AND {} IS NOT NULL",
                Field::Result.sql()
            )
        );
        assert_eq!(o, "(created_at / 1000000) DESC, id DESC");
        assert_eq!(p.len(), 4);
        assert_eq!(p[0], Param::Text("id; DROP TABLE tasks".into()));
    }
}
