//! SQL to a streaming pipeline.
//!
//! DataFusion parses the query, resolves names and types (its analyzer)
//! against the view's sources and tables, and gives a `LogicalPlan`. The
//! planner reads that plan as the shape a streaming feature view has:
//!
//! ```text
//!   Projection / Filter (HAVING)          ─▶ post transform, over each window's result
//!   Aggregate GROUP BY keys[, <window>]   ─▶ keyed window or continuous aggregation (DataFusion accumulators)
//!   Projection / Filter (WHERE)           ─▶ transform, before the aggregation
//!   Join stream ⋈ table ON stream.x = table.key  ─▶ lookup join
//!   Join stream ⋈ stream ON keys AND time bounds ─▶ interval join
//!   TableScan stream                      ─▶ Kafka source
//! ```
//!
//! Expressions become DataFusion physical expressions; aggregates become
//! the same `AggregateFunctionExpr`s DataFusion's batch engine runs. A join
//! of two streams bounded in event time becomes the runtime's interval join
//! (`stream_join.rs`); an aggregation without a window is continuous
//! (emitted as its groups change). Anything else — ORDER BY, LIMIT, an
//! unbounded join of two streams, HAVING without a window, a window
//! function over rows — is refused with the construct named and its
//! `file:line:col`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::common::{Column, DFSchema, TableReference};
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::{ExecutionProps, SessionConfig, SessionContext};
use datafusion::functions_aggregate::expr_fn::max;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, JoinType, LogicalPlan, Projection, TableScan,
};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use weir_dataflow::aggregate::{Emit, WINDOW_END, WINDOW_START};
use weir_dataflow::interval_join::IntervalJoinPlan;
use weir_dataflow::job::{EventTime, KafkaSource, Pipeline, Sink, Source, WindowedAggregate};
use weir_dataflow::lookup::{JoinKind, Lookup, LookupPlan};
use weir_dataflow::plan::{AggregatePlan, physical_aggregates};
use weir_dataflow::transform::{Step, Transform};
use weir_dataflow::window::Window;

use crate::SqlError;
use crate::expr::strip_cast;
use crate::functions::{HopStarts, WindowFunction, WindowKind, window_call, window_of};
pub use crate::resolved::{ResolvedSource, ResolvedTable};
use crate::view::{EmitMode, ViewFile, error_at};

/// How a view's names resolve: topics to schemas, views to their results.
pub trait Catalog {
    /// The Arrow schema of a topic's records (its registered Avro schema).
    fn topic_schema(&self, topic: &str) -> Result<SchemaRef, String>;
    /// Partitions of a topic.
    fn partitions(&self, topic: &str) -> Result<i32, String>;
    /// The output topic and schema of a view's current version.
    fn view_output(&self, view: &str) -> Result<(String, SchemaRef), String>;
}

/// A planned view: the streaming pipeline, and what the batch run reuses.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The view.
    pub view: ViewFile,
    /// The streaming job.
    pub pipeline: Pipeline,
    /// The schema of the view's rows.
    pub output: SchemaRef,
    /// Where the stream writes them.
    pub topic: String,
    /// The stream the query reads.
    pub source: ResolvedSource,
    /// The table it joins, if any.
    pub table: Option<ResolvedTable>,
    /// The second stream it joins, if any.
    pub joined: Option<ResolvedSource>,
    /// The window, if the view aggregates.
    pub window: Option<Window>,
}

/// Options of [`plan_view`].
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The output topic.
    pub topic: String,
    /// The streaming job's name (its state directory and consumer group).
    pub job: String,
    /// Where jobs keep their state.
    pub state_dir: PathBuf,
}

fn header_error(view: &ViewFile, message: impl Into<String>) -> SqlError {
    SqlError::At {
        path: view.path.clone(),
        line: 2,
        column: 1,
        message: message.into(),
    }
}

/// A DataFusion error at the place it names: its diagnostic span, the
/// position a parser error gives, or the first identifier it quotes.
fn datafusion_error(view: &ViewFile, error: DataFusionError) -> SqlError {
    let message = error.strip_backtrace();
    let message = message
        .trim_start_matches("Error during planning: ")
        .trim_start_matches("SQL error: ")
        .to_string();
    if let Some(span) = error.diagnostic().and_then(|d| d.span) {
        return SqlError::At {
            path: view.path.clone(),
            line: view.sql_line + span.start.line as usize - 1,
            column: span.start.column as usize,
            message,
        };
    }
    // sqlparser: "... at Line: 3, Column: 7"
    if let Some(at) = message.find("Line: ") {
        let rest = &message[at + 6..];
        let line: Option<usize> = rest.split(',').next().and_then(|l| l.trim().parse().ok());
        let column: Option<usize> = rest
            .find("Column: ")
            .and_then(|c| rest[c + 8..].split(|ch: char| !ch.is_ascii_digit()).next())
            .and_then(|c| c.parse().ok());
        if let (Some(line), Some(column)) = (line, column) {
            return SqlError::At {
                path: view.path.clone(),
                line: view.sql_line + line - 1,
                column,
                message,
            };
        }
    }
    let quoted = ['\'', '"', '`']
        .iter()
        .find_map(|q| message.split(*q).nth(1))
        .map(|s| s.rsplit('.').next().unwrap_or(s).to_string())
        .unwrap_or_default();
    error_at(view, &quoted, message)
}

fn inline_schema(
    view: &ViewFile,
    what: &str,
    schema: &std::collections::BTreeMap<String, String>,
) -> Result<SchemaRef, SqlError> {
    let fields = schema
        .iter()
        .map(|(name, kind)| {
            weir_dataflow::column_type::parse(kind)
                .map(|(t, _)| Field::new(name, t, true))
                .map_err(|e| header_error(view, format!("{what}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Schema::new(fields)))
}

fn duration(
    view: &ViewFile,
    what: &str,
    text: &Option<String>,
    default: Duration,
) -> Result<Duration, SqlError> {
    match text {
        None => Ok(default),
        Some(text) => weir_dataflow::spec::parse_duration(text)
            .map_err(|e| header_error(view, format!("{what}: {e}"))),
    }
}

/// Resolves the header's sources and tables through the catalog.
fn resolve(
    view: &ViewFile,
    catalog: &dyn Catalog,
) -> Result<(Vec<ResolvedSource>, Vec<ResolvedTable>), SqlError> {
    let mut sources = Vec::new();
    for (name, def) in &view.header.sources {
        let (topic, schema, default_time) = match (&def.topic, &def.view) {
            (Some(topic), None) => {
                let schema = match &def.schema {
                    Some(schema) => inline_schema(view, &format!("source `{name}`"), schema)?,
                    None => catalog
                        .topic_schema(topic)
                        .map_err(|e| header_error(view, format!("source `{name}`: {e}")))?,
                };
                (topic.clone(), schema, None)
            }
            (None, Some(upstream)) => {
                let (topic, schema) = catalog
                    .view_output(upstream)
                    .map_err(|e| header_error(view, format!("source `{name}`: {e}")))?;
                (topic, schema, Some(WINDOW_END.to_string()))
            }
            _ => {
                return Err(header_error(
                    view,
                    format!("source `{name}` needs one of `topic` or `view`"),
                ));
            }
        };
        let event_time = def.event_time.clone().or(default_time).ok_or_else(|| {
            header_error(
                view,
                format!("source `{name}` needs `event_time` (a column)"),
            )
        })?;
        if schema.index_of(&event_time).is_err() {
            return Err(header_error(
                view,
                format!("source `{name}`: the event time `{event_time}` is not one of its columns"),
            ));
        }
        sources.push(ResolvedSource {
            name: name.clone(),
            topic,
            schema,
            event_time,
            lateness: duration(view, "lateness", &def.lateness, Duration::ZERO)?,
            idle_timeout: duration(
                view,
                "idle_timeout",
                &def.idle_timeout,
                Duration::from_secs(30),
            )?,
        });
    }
    let mut tables = Vec::new();
    for (name, def) in &view.header.tables {
        let schema = match &def.schema {
            Some(schema) => inline_schema(view, &format!("table `{name}`"), schema)?,
            None => catalog
                .topic_schema(&def.topic)
                .map_err(|e| header_error(view, format!("table `{name}`: {e}")))?,
        };
        if schema.index_of(&def.key).is_err() {
            return Err(header_error(
                view,
                format!(
                    "table `{name}`: the key `{}` is not one of its columns",
                    def.key
                ),
            ));
        }
        tables.push(ResolvedTable {
            name: name.clone(),
            topic: def.topic.clone(),
            schema,
            key: def.key.clone(),
        });
    }
    Ok((sources, tables))
}

/// A DataFusion context with the dialect's functions.
pub(crate) fn context() -> SessionContext {
    let mut config = SessionConfig::new();
    config.options_mut().sql_parser.collect_spans = true;
    let context = weir_dataflow::udaf::register(SessionContext::new_with_config(config));
    for kind in [WindowKind::Tumble, WindowKind::Hop, WindowKind::Session] {
        context.register_udf(WindowFunction::udf(kind));
    }
    context.register_udf(HopStarts::udf());
    context
}

/// Plans the query against `context` (whose tables are registered) and
/// applies DataFusion's analyzer (type coercion); no optimizer, so the
/// plan keeps the query's shape.
pub(crate) fn logical_plan(
    view: &ViewFile,
    context: &SessionContext,
) -> Result<LogicalPlan, SqlError> {
    use datafusion::common::tree_node::TreeNode as _;
    use datafusion::optimizer::OptimizerRule as _;
    let state = context.state();
    let plan = futures::executor::block_on(state.create_logical_plan(&view.sql))
        .map_err(|e| datafusion_error(view, e))?;
    let plan = state
        .analyzer()
        .execute_and_check(plan, state.config_options(), |_, _| {})
        .map_err(|e| datafusion_error(view, e))?;
    // Expressions simplified as DataFusion's optimizer would: some
    // functions (`coalesce`, `nvl`) exist only to be rewritten so, and the
    // stream plans its expressions from this plan.
    let simplify = datafusion::optimizer::simplify_expressions::SimplifyExpressions::new();
    let options = datafusion::optimizer::OptimizerContext::new();
    plan.transform_up(|node| simplify.rewrite(node, &options))
        .map(|simplified| simplified.data)
        .map_err(|e| datafusion_error(view, e))
}

/// A view without a window keeps each row's event time, its feature time
/// (as a Feast feature view's rows keep their timestamp field): when the
/// select list leaves the source's event time column out, it is added as
/// the last column. An aggregation without a window times each group by
/// its latest event, `max(<event time>)`, added the same way. A windowed
/// view's rows are timed by their window.
pub(crate) fn with_event_time(
    view: &ViewFile,
    plan: LogicalPlan,
    event_time: &str,
) -> Result<LogicalPlan, SqlError> {
    let LogicalPlan::Projection(projection) = &plan else {
        return Ok(plan);
    };
    let kept = projection
        .schema
        .fields()
        .iter()
        .any(|f| f.name() == event_time);
    if kept {
        return Ok(plan);
    }
    let rebuilt = |exprs: Vec<Expr>, input: LogicalPlan| {
        Projection::try_new(exprs, Arc::new(input))
            .map(LogicalPlan::Projection)
            .map_err(|e| datafusion_error(view, e))
    };
    let mut exprs = projection.expr.clone();
    match aggregation(&projection.input) {
        Aggregation::Windowed => return Ok(plan),
        Aggregation::Continuous => {
            let Some(input) = with_latest_time(view, &projection.input, event_time)? else {
                return Err(error_at(
                    view,
                    "SELECT",
                    format!(
                        "an aggregation without a window is timed by each group's latest event:                          select `max({event_time}) AS {event_time}`"
                    ),
                ));
            };
            exprs.push(Expr::Column(Column::new_unqualified(event_time)));
            return rebuilt(exprs, input);
        }
        Aggregation::None => {}
    }
    let columns = projection
        .input
        .schema()
        .columns_with_unqualified_name(event_time);
    // In a join of two streams, the left side's (its columns come first)
    // times the rows.
    let Some(column) = columns.first() else {
        // Not there: the view's rows cannot be timed.
        return Err(error_at(
            view,
            "SELECT",
            format!(
                "a view without a window keeps each row's event time: select `{event_time}` \
                 (it is the row's feature time)"
            ),
        ));
    };
    exprs.push(Expr::Column(column.clone()));
    rebuilt(exprs, projection.input.as_ref().clone())
}

/// Whether a plan aggregates, and how.
enum Aggregation {
    None,
    Windowed,
    Continuous,
}

fn aggregation(plan: &LogicalPlan) -> Aggregation {
    if let LogicalPlan::Aggregate(aggregate) = plan {
        return if aggregate
            .group_expr
            .iter()
            .any(|e| window_call(e).is_some())
        {
            Aggregation::Windowed
        } else {
            Aggregation::Continuous
        };
    }
    plan.inputs()
        .into_iter()
        .map(aggregation)
        .find(|a| !matches!(a, Aggregation::None))
        .unwrap_or(Aggregation::None)
}

/// `plan` (filters over an aggregation) with `max(<event time>) AS <event
/// time>` among the aggregates; `None` if the aggregation is not there.
fn with_latest_time(
    view: &ViewFile,
    plan: &LogicalPlan,
    event_time: &str,
) -> Result<Option<LogicalPlan>, SqlError> {
    match plan {
        LogicalPlan::Filter(filter) => {
            let Some(input) = with_latest_time(view, &filter.input, event_time)? else {
                return Ok(None);
            };
            Filter::try_new(filter.predicate.clone(), Arc::new(input))
                .map(|f| Some(LogicalPlan::Filter(f)))
                .map_err(|e| datafusion_error(view, e))
        }
        LogicalPlan::Aggregate(aggregate) => {
            let columns = aggregate
                .input
                .schema()
                .columns_with_unqualified_name(event_time);
            let Some(time) = columns.first() else {
                return Ok(None);
            };
            let mut aggregates = aggregate.aggr_expr.clone();
            aggregates.push(max(Expr::Column(time.clone())).alias(event_time));
            Aggregate::try_new(
                aggregate.input.clone(),
                aggregate.group_expr.clone(),
                aggregates,
            )
            .map(|a| Some(LogicalPlan::Aggregate(a)))
            .map_err(|e| datafusion_error(view, e))
        }
        _ => Ok(None),
    }
}

/// The nodes of a streaming query, top-down.
pub(crate) struct Shape<'a> {
    /// Above the aggregation (HAVING, the select list).
    pub post: Vec<&'a LogicalPlan>,
    /// The aggregation.
    pub aggregate: Option<&'a Aggregate>,
    /// Between the aggregation (or the top) and the join or scan.
    pub pre: Vec<&'a LogicalPlan>,
    /// The join with a table.
    pub join: Option<&'a Join>,
    /// The join with a second stream (then `join` is `None`).
    pub stream_join: Option<&'a Join>,
    /// The stream's scan (the left one of a join of two streams).
    pub scan: &'a TableScan,
}

fn strip_alias(plan: &LogicalPlan) -> &LogicalPlan {
    match plan {
        LogicalPlan::SubqueryAlias(alias) => strip_alias(&alias.input),
        other => other,
    }
}

/// Reads the query's plan as a streaming shape, refusing what streams
/// cannot do.
pub(crate) fn shape<'a>(
    view: &ViewFile,
    plan: &'a LogicalPlan,
    tables: &[String],
) -> Result<Shape<'a>, SqlError> {
    let mut post = Vec::new();
    let mut pre = Vec::new();
    let mut aggregate = None;
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(_) | LogicalPlan::Filter(_) => {
                if aggregate.is_some() {
                    pre.push(node)
                } else {
                    post.push(node)
                }
                node = node.inputs()[0];
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::Aggregate(a) => {
                if aggregate.is_some() {
                    return Err(error_at(
                        view,
                        "GROUP BY",
                        "an aggregation of an aggregation is not supported in a stream: make the inner one a view of its own and read it with `view:`",
                    ));
                }
                aggregate = Some(a);
                node = &a.input;
            }
            LogicalPlan::Join(join) => {
                let left = strip_alias(&join.left);
                let right = strip_alias(&join.right);
                let (LogicalPlan::TableScan(stream), LogicalPlan::TableScan(table)) = (left, right)
                else {
                    return Err(error_at(
                        view,
                        "JOIN",
                        "a join must be between a stream and a table directly (no subquery on either side)",
                    ));
                };
                let is_table = |s: &TableScan| tables.iter().any(|t| t == s.table_name.table());
                if aggregate.is_none() {
                    pre.append(&mut post);
                }
                if !is_table(table) && !is_table(stream) {
                    return Ok(Shape {
                        post,
                        aggregate,
                        pre,
                        join: None,
                        stream_join: Some(join),
                        scan: stream,
                    });
                }
                if !is_table(table) {
                    return Err(error_at(
                        view,
                        "JOIN",
                        format!(
                            "put the stream first: `FROM <stream> JOIN {}`",
                            stream.table_name.table()
                        ),
                    ));
                }
                if is_table(stream) {
                    return Err(error_at(
                        view,
                        "FROM",
                        "the query reads no stream: FROM needs a source",
                    ));
                }
                if !matches!(join.join_type, JoinType::Inner | JoinType::Left) {
                    return Err(error_at(
                        view,
                        "JOIN",
                        format!(
                            "{} joins are not supported with a table: use JOIN or LEFT JOIN",
                            join.join_type
                        ),
                    ));
                }
                return Ok(Shape {
                    post,
                    aggregate,
                    pre,
                    join: Some(join),
                    stream_join: None,
                    scan: stream,
                });
            }
            LogicalPlan::TableScan(scan) => {
                if tables.iter().any(|t| t == scan.table_name.table()) {
                    return Err(error_at(
                        view,
                        scan.table_name.table(),
                        format!(
                            "`{}` is a table: a view reads a stream, and joins tables to it",
                            scan.table_name.table()
                        ),
                    ));
                }
                if aggregate.is_none() {
                    pre.append(&mut post);
                }
                return Ok(Shape {
                    post,
                    aggregate,
                    pre,
                    join: None,
                    stream_join: None,
                    scan,
                });
            }
            LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Distinct(_)
            | LogicalPlan::Window(_)
            | LogicalPlan::Union(_)
            | LogicalPlan::Unnest(_) => {
                let (construct, message) = match node {
                    LogicalPlan::Sort(_) => (
                        "ORDER BY",
                        "ORDER BY is not supported in a stream (results come in window order)",
                    ),
                    LogicalPlan::Limit(_) => ("LIMIT", "LIMIT is not supported in a stream"),
                    LogicalPlan::Distinct(_) => (
                        "DISTINCT",
                        "SELECT DISTINCT is not supported in a stream: GROUP BY the columns with a window",
                    ),
                    LogicalPlan::Window(_) => (
                        "OVER",
                        "window functions over rows (OVER) are not supported in a stream: use tumble(), hop() or session() in GROUP BY",
                    ),
                    LogicalPlan::Union(_) => ("UNION", "UNION is not supported in a stream"),
                    _ => ("unnest", "unnest is not supported in a stream"),
                };
                return Err(error_at(view, construct, message));
            }
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                return Err(error_at(
                    view,
                    "SELECT",
                    "the query reads no stream: FROM needs a source",
                ));
            }
            other => {
                let name = other.display().to_string();
                let name = name
                    .split(':')
                    .next()
                    .unwrap_or("this construct")
                    .to_string();
                return Err(error_at(
                    view,
                    "",
                    format!("{name} is not supported in a stream"),
                ));
            }
        }
    }
}

/// Physical steps of plan nodes listed top-down, applied bottom-up; the
/// bottom node's input is read as `input` (a schema laid out like it).
fn steps(
    view: &ViewFile,
    nodes: &[&LogicalPlan],
    input: Option<&DFSchema>,
) -> Result<Vec<Step>, SqlError> {
    let props = ExecutionProps::new();
    let planning = PhysicalPlanningContext::default();
    let mut steps = Vec::new();
    // `input` stands for the bottom node's input, and so for the input of
    // every filter above it until a projection changes the rows' shape.
    let mut substitute = input;
    for node in nodes.iter().rev() {
        let own_input = node.inputs()[0].schema();
        let schema: &DFSchema = substitute.unwrap_or(own_input);
        if matches!(node, LogicalPlan::Projection(_)) {
            substitute = None;
        }
        let physical = |expr: &Expr| {
            create_physical_expr(expr, schema, &props, &planning)
                .map_err(|e| datafusion_error(view, e))
        };
        match node {
            LogicalPlan::Filter(f) => steps.push(Step::Filter(physical(&f.predicate)?)),
            LogicalPlan::Projection(p) => {
                let exprs = p.expr.iter().map(physical).collect::<Result<Vec<_>, _>>()?;
                steps.push(Step::Project(exprs, Arc::new(p.schema.as_arrow().clone())));
            }
            _ => unreachable!("shape() lets only filters and projections through"),
        }
    }
    Ok(steps)
}

fn transform(steps: Vec<Step>, input: SchemaRef) -> Option<Transform> {
    if steps.is_empty() {
        return None;
    }
    let output = steps
        .iter()
        .rev()
        .find_map(|s| match s {
            Step::Project(_, schema) => Some(schema.clone()),
            Step::Filter(_) => None,
        })
        .unwrap_or(input);
    Some(Transform { steps, output })
}

/// The window of an aggregation and where it is among the group exprs.
pub(crate) struct WindowGroup<'a> {
    /// Index among the group exprs.
    pub index: usize,
    /// Which function.
    pub kind: WindowKind,
    /// Its time argument.
    pub time: &'a Expr,
    /// The window.
    pub window: Window,
}

/// The window among an aggregation's group exprs; `None`: a continuous
/// aggregation, which never closes and emits its groups as they change.
pub(crate) fn window_group<'a>(
    view: &ViewFile,
    aggregate: &'a Aggregate,
) -> Result<Option<WindowGroup<'a>>, SqlError> {
    let mut found = None;
    for (index, expr) in aggregate.group_expr.iter().enumerate() {
        if let Some((kind, time, intervals)) = window_call(expr) {
            if found.is_some() {
                return Err(error_at(view, kind.name(), "a GROUP BY takes one window"));
            }
            let window = window_of(kind, &intervals).map_err(|e| {
                error_at(
                    view,
                    &format!("{}(", kind.name()),
                    e.strip_backtrace()
                        .trim_start_matches("Error during planning: ")
                        .to_string(),
                )
            })?;
            found = Some(WindowGroup {
                index,
                kind,
                time,
                window,
            });
        }
    }
    Ok(found)
}

/// Plans a view as a streaming pipeline.
pub fn plan_view(
    view: &ViewFile,
    catalog: &dyn Catalog,
    options: &PlanOptions,
) -> Result<Plan, SqlError> {
    let (sources, tables) = resolve(view, catalog)?;
    let context = context();
    for source in &sources {
        context.register_table(
            &source.name,
            Arc::new(EmptyTable::new(source.schema.clone())),
        )?;
    }
    for table in &tables {
        context.register_table(&table.name, Arc::new(EmptyTable::new(table.schema.clone())))?;
    }
    let table_names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let logical = {
        let logical = logical_plan(view, &context)?;
        let scanned = shape(view, &logical, &table_names)?.scan.table_name.clone();
        let event_time = &sources
            .iter()
            .find(|s| s.name == scanned.table())
            .expect("scans resolve to registered sources")
            .event_time;
        with_event_time(view, logical, event_time)?
    };
    let shape = shape(view, &logical, &table_names)?;
    let source = sources
        .iter()
        .find(|s| s.name == shape.scan.table_name.table())
        .expect("scans resolve to registered sources")
        .clone();

    // The lookup join.
    let (lookup, table) = match shape.join {
        None => (None, None),
        Some(join) => {
            let table_scan = match strip_alias(&join.right) {
                LogicalPlan::TableScan(scan) => scan,
                _ => unreachable!("shape() checked"),
            };
            let table = tables
                .iter()
                .find(|t| t.name == table_scan.table_name.table())
                .expect("a registered table")
                .clone();
            let on_error = || {
                error_at(
                    view,
                    " ON ",
                    format!(
                        "a stream joins a table on the table's key: ON <stream column> = {}.{}",
                        table.name, table.key
                    ),
                )
            };
            // The SQL planner (with no optimizer) leaves `a = b` in the
            // join's filter rather than its equi-join keys.
            let pairs: Vec<(Expr, Expr)> = match (&join.filter, join.on.as_slice()) {
                (None, on) => on.to_vec(),
                (Some(Expr::BinaryExpr(b)), [])
                    if b.op == datafusion::logical_expr::Operator::Eq =>
                {
                    vec![(*b.left.clone(), *b.right.clone())]
                }
                _ => return Err(on_error()),
            };
            let [(a, b)] = pairs.as_slice() else {
                return Err(on_error());
            };
            let (Expr::Column(a), Expr::Column(b)) = (strip_cast(a), strip_cast(b)) else {
                return Err(on_error());
            };
            // Which side is the table's: the one the table's scan resolves.
            let right_schema = join.right.schema();
            let (left, right) = if right_schema.has_column(b) {
                (a, b)
            } else {
                (b, a)
            };
            if !right_schema.has_column(right) || right_schema.has_column(left) {
                return Err(on_error());
            }
            if right.name != table.key {
                return Err(on_error());
            }
            let lookup = Lookup {
                topic: table.topic.clone(),
                schema: Some(table.schema.clone()),
                key: table.key.clone(),
                on: left.name.clone(),
                columns: table
                    .schema
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), format!("{}.{}", table.name, f.name())))
                    .collect(),
                kind: if join.join_type == JoinType::Left {
                    JoinKind::Left
                } else {
                    JoinKind::Inner
                },
            };
            let partitions = catalog
                .partitions(&table.topic)
                .map_err(|e| header_error(view, format!("table `{}`: {e}", table.name)))?;
            let plan = LookupPlan::new(&lookup, &source.schema, table.schema.clone(), partitions)?;
            (Some(plan), Some(table))
        }
    };
    // The interval join.
    let (join, joined_source) = match shape.stream_join {
        None => (None, None),
        Some(join) => {
            let LogicalPlan::TableScan(right_scan) = strip_alias(&join.right) else {
                unreachable!("shape() checked");
            };
            let right = sources
                .iter()
                .find(|s| s.name == right_scan.table_name.table())
                .expect("scans resolve to registered sources")
                .clone();
            let spec = crate::stream_join::interval_join(view, join, &source, &right)?;
            let plan = IntervalJoinPlan::new(
                spec,
                source.schema.clone(),
                &source.event_time,
                right.schema.clone(),
            )?;
            (Some(plan), Some(right))
        }
    };
    let joined = match (&lookup, &join) {
        (Some(l), _) => l.output.clone(),
        (None, Some(j)) => j.output.clone(),
        (None, None) => source.schema.clone(),
    };

    let mut pre = steps(view, &shape.pre, None)?;
    let (aggregate, post, window) = match shape.aggregate {
        None => (None, None, None),
        Some(aggregate) => {
            let window = window_group(view, aggregate)?;
            if window.is_none()
                && shape
                    .post
                    .iter()
                    .any(|node| matches!(node, LogicalPlan::Filter(_)))
            {
                return Err(error_at(
                    view,
                    "HAVING",
                    "HAVING over an aggregation without a window is not supported: a group it lets \
                     through could later fail it, and an update cannot be taken back",
                ));
            }
            let window_index = window.as_ref().map(|w| w.index);
            let input = aggregate.input.schema();
            let time = match &window {
                Some(window) => {
                    let Expr::Column(time) = window.time else {
                        return Err(error_at(
                            view,
                            window.kind.name(),
                            format!(
                                "the first argument of {}() is the event time column `{}`",
                                window.kind.name(),
                                source.event_time
                            ),
                        ));
                    };
                    let on_the_left = shape
                        .stream_join
                        .is_none_or(|join| join.left.schema().has_column(time));
                    if time.name != source.event_time || !on_the_left {
                        return Err(error_at(
                            view,
                            &time.name,
                            format!(
                                "{}() must window the event time `{}` (the watermark follows it), not `{}`",
                                window.kind.name(),
                                source.event_time,
                                time.name
                            ),
                        ));
                    }
                    time.clone()
                }
                None => input
                    .columns_with_unqualified_name(&source.event_time)
                    .first()
                    .cloned()
                    .ok_or_else(|| {
                        error_at(
                            view,
                            "GROUP BY",
                            format!(
                                "the aggregation's input has no event time `{}`",
                                source.event_time
                            ),
                        )
                    })?,
            };
            let time_column = input
                .index_of_column(&time)
                .map_err(|e| datafusion_error(view, e))?;
            // Keys: columns of the aggregation's input, or expressions
            // computed into extra columns at the end of the pre transform.
            let mut fields: Vec<FieldRef> = input.fields().iter().cloned().collect();
            let mut computed: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
            let mut keys = Vec::new();
            let props = ExecutionProps::new();
            let planning = PhysicalPlanningContext::default();
            for (g, expr) in aggregate.group_expr.iter().enumerate() {
                if Some(g) == window_index {
                    continue;
                }
                match expr {
                    Expr::Column(column) => keys.push(
                        input
                            .index_of_column(column)
                            .map_err(|e| datafusion_error(view, e))?,
                    ),
                    expr => {
                        let physical = create_physical_expr(expr, input, &props, &planning)
                            .map_err(|e| datafusion_error(view, e))?;
                        let (_, field) = aggregate.schema.qualified_field(g);
                        keys.push(fields.len() + computed.len());
                        computed.push(physical);
                        fields.push(Arc::new(Field::new(
                            format!("__key{g}"),
                            field.data_type().clone(),
                            field.is_nullable(),
                        )));
                    }
                }
            }
            let n_columns = input.fields().len();
            let aggregate_input: SchemaRef = Arc::new(Schema::new(fields.clone()));
            if !computed.is_empty() {
                let mut exprs: Vec<Arc<dyn PhysicalExpr>> = (0..n_columns)
                    .map(|i| {
                        Arc::new(PhysicalColumn::new(input.field(i).name(), i))
                            as Arc<dyn PhysicalExpr>
                    })
                    .collect();
                exprs.extend(computed);
                pre.push(Step::Project(exprs, aggregate_input.clone()));
            }
            let n_groups = aggregate.group_expr.len();
            let names: Vec<String> = (0..aggregate.aggr_expr.len())
                .map(|j| aggregate.schema.field(n_groups + j).name().clone())
                .collect();
            let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let aggregates = physical_aggregates(&aggregate.aggr_expr, &name_refs, input)
                .map_err(|e| error_at(view, "", e.to_string()))?;
            let plan = AggregatePlan {
                input: aggregate_input,
                filter: None,
                keys,
                aggregates,
                names,
            };
            let runtime_window = window.as_ref().map_or(Window::Global, |w| w.window);
            // The aggregator's rows are [keys, window_start, window_end,
            // aggregates] ([keys, aggregates] without a window); the nodes
            // above read them through a schema with DataFusion's names for
            // those columns.
            let result = weir_dataflow::aggregate::result_schema(&plan, runtime_window)?;
            let mut layout: Vec<(Option<TableReference>, FieldRef)> = Vec::new();
            let mut k = 0;
            let named =
                |layout: &mut Vec<(Option<TableReference>, FieldRef)>, k: &mut usize, g: usize| {
                    let (qualifier, field) = aggregate.schema.qualified_field(g);
                    layout.push((
                        qualifier.cloned(),
                        Arc::new(result.field(*k).as_ref().clone().with_name(field.name())),
                    ));
                    *k += 1;
                };
            for g in 0..n_groups {
                if Some(g) != window_index {
                    named(&mut layout, &mut k, g);
                }
            }
            let start_index = layout.len();
            if let Some(index) = window_index {
                named(&mut layout, &mut k, index);
                layout.push((
                    None,
                    Arc::new(result.field(k).as_ref().clone().with_name("__window_end")),
                ));
                k += 1;
            }
            for j in 0..aggregate.aggr_expr.len() {
                named(&mut layout, &mut k, n_groups + j);
            }
            let layout = DFSchema::new_with_metadata(layout, HashMap::new())
                .map_err(|e| datafusion_error(view, e))?;
            let mut post_steps = steps(view, &shape.post, Some(&layout))?;
            if window.is_some() {
                append_window_columns(&shape.post, &mut post_steps, start_index, &result);
            }
            // Without a window the groups never close: each is emitted as it
            // changes, an upsert by its key.
            let emit = match (view.header.emit, &window) {
                (_, None) | (EmitMode::Update, _) => Emit::OnUpdate,
                (EmitMode::Close, Some(_)) => Emit::OnClose,
            };
            (
                Some(WindowedAggregate {
                    plan,
                    window: runtime_window,
                    time_column,
                    emit,
                }),
                transform(post_steps, result),
                window.map(|w| w.window),
            )
        }
    };
    let pre = transform(pre, joined.clone());
    let mut pipeline = Pipeline {
        name: options.job.clone(),
        source: Source::Kafka(KafkaSource {
            topic: source.topic.clone(),
            schema: Some(source.schema.clone()),
            event_time: EventTime::Field(source.event_time.clone()),
            lateness: source.lateness,
            idle_timeout: source.idle_timeout,
            start: weir_dataflow::job::Start::Earliest,
            bounded: false,
        }),
        source_schema: source.schema.clone(),
        lookup,
        join,
        transform: pre,
        operators: Vec::new(),
        aggregate,
        post,
        sink: Sink::Kafka {
            topic: options.topic.clone(),
            key: Vec::new(),
        },
        checkpoint_interval: duration(
            view,
            "checkpoint_interval",
            &view.header.checkpoint_interval,
            Duration::from_secs(1),
        )?,
        state_dir: options.state_dir.clone(),
    };
    let output = pipeline.output_schema()?;
    for name in output.fields().iter().map(|f| f.name()) {
        if output.fields().iter().filter(|f| f.name() == name).count() > 1 {
            return Err(error_at(
                view,
                name,
                format!("the output has two columns named `{name}`: name them with AS"),
            ));
        }
    }
    let mut key = Vec::new();
    for entity in &view.header.entity {
        if output.index_of(entity).is_err() {
            return Err(header_error(
                view,
                format!(
                    "the entity column `{entity}` is not in the output ({})",
                    output
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        key.push(entity.clone());
    }
    if let Some(created) = &view.header.created_timestamp
        && output.index_of(created).is_err()
    {
        return Err(header_error(
            view,
            format!("the created timestamp `{created}` is not in the output: select it"),
        ));
    }
    if window.is_some() {
        key.push(WINDOW_START.to_string());
    }
    pipeline.sink = Sink::Kafka {
        topic: options.topic.clone(),
        key,
    };
    Ok(Plan {
        view: view.clone(),
        pipeline,
        output,
        topic: options.topic.clone(),
        source,
        table,
        joined: joined_source,
        window,
    })
}

/// Adds `window_start` and `window_end` to the select list when it does
/// not have them, so every row says which window it is.
fn append_window_columns(
    post: &[&LogicalPlan],
    steps: &mut [Step],
    start_index: usize,
    result: &SchemaRef,
) {
    // Only a select list read straight off the aggregation's rows (maybe
    // through HAVING) can see the window columns.
    let direct = post
        .iter()
        .skip(1)
        .all(|node| matches!(node, LogicalPlan::Filter(_)))
        && matches!(post.first(), Some(LogicalPlan::Projection(_)));
    let Some(Step::Project(exprs, schema)) = steps.last_mut() else {
        return;
    };
    if !direct {
        return;
    }
    let mut fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    for (name, index) in [(WINDOW_START, start_index), (WINDOW_END, start_index + 1)] {
        if fields.iter().any(|f| f.name() == name) {
            continue;
        }
        exprs.push(Arc::new(PhysicalColumn::new(name, index)));
        fields.push(Arc::new(
            result.field(index).as_ref().clone().with_name(name),
        ));
    }
    *schema = Arc::new(Schema::new(fields));
}
