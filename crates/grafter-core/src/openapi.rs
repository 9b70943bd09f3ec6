//! OpenAPI schemas that say what validation here enforces, for fields whose
//! rules a derived schema cannot carry (`#[schema(schema_with = …)]`): the
//! server's document is checked against the server, so a value the schema
//! allows must be one the validation accepts, and the other way round.

use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Ref, RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use crate::bounds::{MAX_NAME_LEN, MAX_TAGS, MIN_EVERY_MS};
use crate::time::MAX_DURATION_MS;

/// The characters [`crate::job`]'s `is_invisible` and `char::is_control` refuse
/// in names, as the inside of a character class.
macro_rules! invisible {
    () => {
        "\\u0000-\\u001F\\u007F-\\u009F\\u00AD\\u034F\\u061C\\u115F\\u1160\\u17B4\\u17B5\
         \\u180B-\\u180F\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u206F\\u3164\\uFE00-\\uFE0F\
         \\uFEFF\\uFFA0\\uFFF9-\\uFFFB"
    };
}

/// What [`crate::validate_name`] accepts after the start of the text, as a
/// regular expression that both ECMAScript and Python read alike: no
/// control or invisible character, no white space at either end. (Its few
/// invisible characters beyond the Basic Multilingual Plane are left out:
/// neither dialect writes them the same way.) `maxLength` counts characters
/// where the rule counts UTF-8 bytes; the description says so.
macro_rules! name_rest {
    () => {
        concat!(
            "(?:[^",
            invisible!(),
            "\\s]",
            "(?:[^",
            invisible!(),
            "]*[^",
            invisible!(),
            "\\s])?)$"
        )
    };
}

/// What [`crate::validate_name`] accepts.
pub const NAME_PATTERN: &str = concat!("^", name_rest!());

/// What [`crate::validate_path_name`] accepts: a name, and not `.` or `..`.
pub const PATH_NAME_PATTERN: &str = concat!("^(?!\\.\\.?$)", name_rest!());

/// A string without the NUL character (what PostgreSQL cannot store).
const WITHOUT_NUL: &str = "^[^\\u0000]*$";

fn name_builder(nullable: bool) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(if nullable {
            SchemaType::from_iter([Type::String, Type::Null])
        } else {
            SchemaType::new(Type::String)
        })
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_LEN))
        .pattern(Some(NAME_PATTERN))
}

/// A queue name, kind, tag or key ([`crate::validate_name`]).
pub fn name() -> Schema {
    name_builder(false)
        .description(Some(
            "1 to 255 bytes of UTF-8, no control or invisible characters, no space at either end",
        ))
        .into()
}

/// A queue name, schedule id or worker id ([`crate::validate_path_name`]).
pub fn path_name() -> Schema {
    name_builder(false)
        .pattern(Some(PATH_NAME_PATTERN))
        .description(Some(
            "1 to 255 bytes of UTF-8, no control or invisible characters, no space at either \
             end, not . or ..",
        ))
        .into()
}

/// A name, or `null`.
pub fn name_or_null() -> Schema {
    name_builder(true).into()
}

/// A list of names, at most `max` (and at least `min`).
pub fn names(min: usize, max: usize) -> Schema {
    ArrayBuilder::new()
        .items(name_builder(false))
        .min_items((min > 0).then_some(min))
        .max_items(Some(max))
        .into()
}

/// The queues or kinds of a worker (at most 1,000).
pub fn worker_names() -> Schema {
    names(0, crate::WorkerRegistration::MAX_QUEUES)
}

/// A job's tags.
pub fn tags() -> Schema {
    names(0, MAX_TAGS)
}

/// A count of milliseconds from `min` to `max` (at most 100 years), or
/// also `null`.
pub fn millis(min: u64, max: u64, nullable: bool) -> Schema {
    ObjectBuilder::new()
        .schema_type(if nullable {
            SchemaType::from_iter([Type::Integer, Type::Null])
        } else {
            SchemaType::new(Type::Integer)
        })
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min as f64))
        .maximum(Some(max.min(MAX_DURATION_MS) as f64))
        .into()
}

/// `timeout_ms` of a job: 1 ms to 100 years, or `null`.
pub fn timeout_ms() -> Schema {
    millis(1, MAX_DURATION_MS, true)
}

/// A schedule's `every_ms`: 1 s to 100 years, or `null`.
pub fn every_ms() -> Schema {
    millis(MIN_EVERY_MS, MAX_DURATION_MS, true)
}

/// Any JSON value at all, `null` included.
pub fn any() -> Schema {
    ObjectBuilder::new()
        .schema_type(SchemaType::AnyValue)
        .into()
}

/// Any JSON value with no NUL in its strings and keys, as job args must be
/// ([`crate::storable::validate_json`]).
pub struct JsonValue;

impl PartialSchema for JsonValue {
    fn schema() -> RefOr<Schema> {
        let this = || Ref::from_schema_name(<Self as ToSchema>::name());
        AnyOfBuilder::new()
            .item(ObjectBuilder::new().schema_type(SchemaType::from_iter([
                Type::Null,
                Type::Boolean,
                Type::Number,
            ])))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(WITHOUT_NUL)),
            )
            .item(ArrayBuilder::new().items(this()))
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .property_names(Some(
                        ObjectBuilder::new()
                            .schema_type(Type::String)
                            .pattern(Some(WITHOUT_NUL)),
                    ))
                    .additional_properties(Some(this())),
            )
            .description(Some(
                "Any JSON value; no string or key in it may hold the NUL character",
            ))
            .into()
    }
}

impl ToSchema for JsonValue {}
