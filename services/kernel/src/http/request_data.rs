//! Request data is the merge of path parameters, query parameters and the
//! JSON body, deserialized into the plugin's request type. Path and query
//! values arrive as text; they are parsed into whatever type the field
//! declares (`id: i64` from `/products/42`), so plugins declare one typed
//! struct for all three sources. Path parameters win over query
//! parameters, which win over body fields of the same name.

use serde::de::value::MapDeserializer;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde_json::{Map, Value};
use shared_schemas::FieldError;

/// The raw inputs of one request.
#[derive(Debug, Default)]
pub struct RequestData<'a> {
    /// `name=value` pairs from the path, then the query (later wins).
    pub params: Vec<(String, String)>,
    pub body: &'a [u8],
}

/// The input does not fit the request type: answered with 422.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidInput {
    pub message: String,
    pub fields: Vec<FieldError>,
}

impl RequestData<'_> {
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, InvalidInput> {
        let body = self.body.trim_ascii();
        if self.params.is_empty() && !body.is_empty() {
            // The common POST: read the body directly, no intermediate tree.
            let mut json = serde_json::Deserializer::from_slice(body);
            return serde_path_to_error::deserialize(&mut json).map_err(|e| {
                if e.inner().is_syntax() || e.inner().is_eof() {
                    not_json(e.inner())
                } else {
                    invalid(e.path().to_string(), e.into_inner())
                }
            });
        }
        let mut fields: Map<String, Value> = if body.is_empty() {
            Map::new()
        } else {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => map,
                Ok(_) => {
                    return Err(InvalidInput {
                        message: "the request body must be a JSON object".into(),
                        fields: vec![FieldError {
                            field: "body".into(),
                            message: "expected a JSON object".into(),
                        }],
                    });
                }
                Err(e) => return Err(not_json(&e)),
            }
        };
        for (name, _) in &self.params {
            fields.remove(name);
        }
        let merged = fields.into_iter().map(|(k, v)| (k, Field::Json(v))).chain(
            self.params
                .iter()
                .map(|(k, v)| (k.clone(), Field::Text(v.clone()))),
        );
        let map = MapDeserializer::<_, serde_json::Error>::new(dedup_last(merged).into_iter());
        serde_path_to_error::deserialize(map)
            .map_err(|e| invalid(e.path().to_string(), e.into_inner()))
    }
}

/// Keeps the last value of each name, in first-seen order.
fn dedup_last(fields: impl Iterator<Item = (String, Field)>) -> Vec<(String, Field)> {
    let mut out: Vec<(String, Field)> = Vec::new();
    for (name, value) in fields {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => out.push((name, value)),
        }
    }
    out
}

fn not_json(e: &serde_json::Error) -> InvalidInput {
    InvalidInput {
        message: "the request body is not valid JSON".into(),
        fields: vec![FieldError {
            field: "body".into(),
            message: e.to_string(),
        }],
    }
}

fn invalid(path: String, e: serde_json::Error) -> InvalidInput {
    let message = strip_position(&e.to_string());
    // A missing field is reported at its parent; name the field itself.
    let field = match message.strip_prefix("missing field `") {
        Some(rest) => {
            let name = rest.trim_end_matches('`');
            if path == "." {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            }
        }
        None if path == "." => "body".to_owned(),
        None => path,
    };
    InvalidInput {
        message: format!("invalid input: {field}: {message}"),
        fields: vec![FieldError { field, message }],
    }
}

/// serde_json appends " at line 1 column 9": noise for a field error.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// A value from the body (typed JSON) or from the path or query (text to
/// parse as the target type asks).
enum Field {
    Json(Value),
    Text(String),
}

impl<'de> IntoDeserializer<'de, serde_json::Error> for Field {
    type Deserializer = FieldDeserializer;

    fn into_deserializer(self) -> FieldDeserializer {
        FieldDeserializer(self)
    }
}

struct FieldDeserializer(Field);

macro_rules! parse_text {
    ($($method:ident => $visit:ident: $ty:ty),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_json::Error> {
            match self.0 {
                Field::Json(value) => de::Deserializer::$method(value, visitor),
                Field::Text(text) => match text.trim().parse::<$ty>() {
                    Ok(parsed) => visitor.$visit(parsed),
                    Err(_) => Err(de::Error::invalid_value(
                        de::Unexpected::Str(&text),
                        &stringify!($ty),
                    )),
                },
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for FieldDeserializer {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Field::Json(value) => de::Deserializer::deserialize_any(value, visitor),
            Field::Text(text) => visitor.visit_string(text),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Field::Json(value) => de::Deserializer::deserialize_option(value, visitor),
            Field::Text(text) if text.is_empty() => visitor.visit_none(),
            text => visitor.visit_some(FieldDeserializer(text)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Field::Json(value) => {
                de::Deserializer::deserialize_newtype_struct(value, name, visitor)
            }
            text => visitor.visit_newtype_struct(FieldDeserializer(text)),
        }
    }

    parse_text! {
        deserialize_bool => visit_bool: bool,
        deserialize_i8 => visit_i8: i8,
        deserialize_i16 => visit_i16: i16,
        deserialize_i32 => visit_i32: i32,
        deserialize_i64 => visit_i64: i64,
        deserialize_i128 => visit_i128: i128,
        deserialize_u8 => visit_u8: u8,
        deserialize_u16 => visit_u16: u16,
        deserialize_u32 => visit_u32: u32,
        deserialize_u64 => visit_u64: u64,
        deserialize_u128 => visit_u128: u128,
        deserialize_f32 => visit_f32: f32,
        deserialize_f64 => visit_f64: f64,
        deserialize_char => visit_char: char,
    }

    serde::forward_to_deserialize_any! {
        str string bytes byte_buf unit unit_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Lookup {
        id: i64,
        verbose: Option<bool>,
        name: Option<String>,
    }

    fn data<'a>(params: &[(&str, &str)], body: &'a str) -> RequestData<'a> {
        RequestData {
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.as_bytes(),
        }
    }

    #[test]
    fn path_and_query_text_is_parsed_into_typed_fields() {
        let got: Lookup = data(&[("id", "42"), ("verbose", "true")], "")
            .deserialize()
            .unwrap();
        assert_eq!(
            got,
            Lookup {
                id: 42,
                verbose: Some(true),
                name: None
            }
        );
    }

    #[test]
    fn numeric_looking_text_stays_text_for_string_fields() {
        let got: Lookup = data(&[("id", "1"), ("name", "007")], "")
            .deserialize()
            .unwrap();
        assert_eq!(got.name.as_deref(), Some("007"));
    }

    #[test]
    fn path_params_win_over_body_fields() {
        let got: Lookup = data(&[("id", "7")], r#"{"id": 99, "name": "x"}"#)
            .deserialize()
            .unwrap();
        assert_eq!((got.id, got.name.as_deref()), (7, Some("x")));
    }

    #[test]
    fn errors_name_the_offending_field() {
        let err = data(&[("id", "abc")], "")
            .deserialize::<Lookup>()
            .unwrap_err();
        assert_eq!(err.fields[0].field, "id");

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Create {
            name: String,
            price: f64,
        }
        let err = data(&[], r#"{"name": "x", "price": "cheap"}"#)
            .deserialize::<Create>()
            .unwrap_err();
        assert_eq!(err.fields[0].field, "price");
        let err = data(&[], r#"{"name": "x"}"#)
            .deserialize::<Create>()
            .unwrap_err();
        assert_eq!(err.fields[0].field, "price");
        let err = data(&[], "{not json").deserialize::<Create>().unwrap_err();
        assert_eq!(err.fields[0].field, "body");
        let err = data(&[], "").deserialize::<Create>().unwrap_err();
        assert_eq!(err.fields[0].field, "name");
        let err = data(&[("q", "1")], "[1]")
            .deserialize::<Create>()
            .unwrap_err();
        assert_eq!(err.fields[0].field, "body");
    }
}
