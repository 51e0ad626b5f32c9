//! One singular scalar field's value to and from the wire, as
//! `DynamicMessage` reads and writes it: the wire plan's stepped fields are
//! read into a [`super::Record`] and its result written without building a
//! message.
//!
//! **Invariant:** for a field that [`stands_alone`], [`decode`] gives
//! the value `DynamicMessage::decode` stores for one record of it, and
//! [`encode`] writes the bytes `DynamicMessage::encode` writes for that
//! value (nothing for a default value without presence).

use prost::{
    bytes::BufMut,
    encoding::{self, DecodeContext, WireType},
};
use prost_reflect::{FieldDescriptor, Kind, Value};

/// Whether one record on the wire is the field's whole value: singular,
/// neither a message nor a group, and alone in its oneof if in one (a
/// oneof of several keeps only the member set last).
pub(super) fn stands_alone(field: &FieldDescriptor) -> bool {
    !field.is_list()
        && !field.is_map()
        && !field.is_group()
        && !matches!(field.kind(), Kind::Message(_))
        && field
            .containing_oneof()
            .is_none_or(|oneof| oneof.fields().len() == 1)
}

/// The value of one record of a scalar field; `None` where it does not read
/// as one (the caller decodes the whole message, which names the error).
pub(super) fn decode(
    field: &FieldDescriptor,
    wire_type: WireType,
    mut value: &[u8],
) -> Option<Value> {
    let buf = &mut value;
    let context = DecodeContext::default();
    macro_rules! read {
        ($module:ident, $initial:expr, $variant:path) => {{
            let mut read = $initial;
            encoding::$module::merge(wire_type, &mut read, buf, context).ok()?;
            $variant(read)
        }};
    }
    let decoded = match field.kind() {
        Kind::Double => read!(double, 0f64, Value::F64),
        Kind::Float => read!(float, 0f32, Value::F32),
        Kind::Int32 => read!(int32, 0i32, Value::I32),
        Kind::Int64 => read!(int64, 0i64, Value::I64),
        Kind::Uint32 => read!(uint32, 0u32, Value::U32),
        Kind::Uint64 => read!(uint64, 0u64, Value::U64),
        Kind::Sint32 => read!(sint32, 0i32, Value::I32),
        Kind::Sint64 => read!(sint64, 0i64, Value::I64),
        Kind::Fixed32 => read!(fixed32, 0u32, Value::U32),
        Kind::Fixed64 => read!(fixed64, 0u64, Value::U64),
        Kind::Sfixed32 => read!(sfixed32, 0i32, Value::I32),
        Kind::Sfixed64 => read!(sfixed64, 0i64, Value::I64),
        Kind::Bool => read!(bool, false, Value::Bool),
        Kind::String => read!(string, String::new(), Value::String),
        Kind::Bytes => read!(bytes, prost::bytes::Bytes::new(), Value::Bytes),
        Kind::Enum(_) => read!(int32, 0i32, Value::EnumNumber),
        Kind::Message(_) => return None,
    };
    // Trailing bytes: not one record.
    buf.is_empty().then_some(decoded)
}

/// Writes `value` as the field's record; `false`, writing nothing, where the
/// value is not of the field's kind.
pub(super) fn encode(field: &FieldDescriptor, value: &Value, buf: &mut impl BufMut) -> bool {
    if !field.supports_presence() && value.is_default_for_field(field) {
        return true;
    }
    let number = field.number();
    match (field.kind(), value) {
        (Kind::Double, Value::F64(v)) => encoding::double::encode(number, v, buf),
        (Kind::Float, Value::F32(v)) => encoding::float::encode(number, v, buf),
        (Kind::Int32, Value::I32(v)) => encoding::int32::encode(number, v, buf),
        (Kind::Int64, Value::I64(v)) => encoding::int64::encode(number, v, buf),
        (Kind::Uint32, Value::U32(v)) => encoding::uint32::encode(number, v, buf),
        (Kind::Uint64, Value::U64(v)) => encoding::uint64::encode(number, v, buf),
        (Kind::Sint32, Value::I32(v)) => encoding::sint32::encode(number, v, buf),
        (Kind::Sint64, Value::I64(v)) => encoding::sint64::encode(number, v, buf),
        (Kind::Fixed32, Value::U32(v)) => encoding::fixed32::encode(number, v, buf),
        (Kind::Fixed64, Value::U64(v)) => encoding::fixed64::encode(number, v, buf),
        (Kind::Sfixed32, Value::I32(v)) => encoding::sfixed32::encode(number, v, buf),
        (Kind::Sfixed64, Value::I64(v)) => encoding::sfixed64::encode(number, v, buf),
        (Kind::Bool, Value::Bool(v)) => encoding::bool::encode(number, v, buf),
        (Kind::String, Value::String(v)) => encoding::string::encode(number, v, buf),
        (Kind::Bytes, Value::Bytes(v)) => encoding::bytes::encode(number, v, buf),
        (Kind::Enum(_), Value::EnumNumber(v)) => encoding::int32::encode(number, v, buf),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use prost::Message as _;
    use prost_reflect::{DescriptorPool, DynamicMessage};

    use super::*;

    /// A message with a field of every scalar kind, with and without
    /// presence.
    fn descriptor() -> prost_reflect::MessageDescriptor {
        let proto = r#"
            syntax = "proto3";
            package t;
            enum Colour { COLOUR_UNSPECIFIED = 0; RED = 1; }
            message All {
                double d = 1; float f = 2; int32 i32 = 3; int64 i64 = 4;
                uint32 u32 = 5; uint64 u64 = 6; sint32 s32 = 7; sint64 s64 = 8;
                fixed32 x32 = 9; fixed64 x64 = 10; sfixed32 sx32 = 11; sfixed64 sx64 = 12;
                bool b = 13; string s = 14; bytes by = 15; Colour c = 16;
                optional int64 oi64 = 17; optional string os = 18;
            }
        "#;
        let dir = tempfile::tempdir().expect("a temporary folder");
        std::fs::write(dir.path().join("t.proto"), proto).expect("written");
        let files = protox::compile(["t.proto"], [dir.path()]).expect("compiles");
        let pool = DescriptorPool::from_file_descriptor_set(files).expect("a pool");
        pool.get_message_by_name("t.All").expect("t.All")
    }

    proptest! {
        /// Each field of a decoded message, read and written again one
        /// record at a time, gives the message's own values and bytes.
        #[test]
        fn fields_read_and_write_as_dynamic_message_does(
            d in any::<f64>(), f in any::<f32>(), i32_ in any::<i32>(), i64_ in any::<i64>(),
            u32_ in any::<u32>(), u64_ in any::<u64>(), b in any::<bool>(), s in ".{0,8}",
            by in proptest::collection::vec(any::<u8>(), 0..8), c in 0i32..3,
            oi64 in proptest::option::of(any::<i64>()), zero in any::<bool>(),
        ) {
            let descriptor = descriptor();
            let mut message = DynamicMessage::new(descriptor.clone());
            let pick = |v: i64| if zero { 0 } else { v };
            let values = [
                ("d", Value::F64(if zero { 0.0 } else { d })), ("f", Value::F32(f)),
                ("i32", Value::I32(i32_)), ("i64", Value::I64(pick(i64_))),
                ("u32", Value::U32(u32_)), ("u64", Value::U64(u64_)),
                ("s32", Value::I32(i32_)), ("s64", Value::I64(i64_)),
                ("x32", Value::U32(u32_)), ("x64", Value::U64(u64_)),
                ("sx32", Value::I32(i32_)), ("sx64", Value::I64(i64_)),
                ("b", Value::Bool(b)), ("s", Value::String(s)), ("by", Value::Bytes(by.into())),
                ("c", Value::EnumNumber(c)),
            ];
            for (name, value) in values {
                message.set_field_by_name(name, value);
            }
            if let Some(oi64) = oi64 {
                message.set_field_by_name("oi64", Value::I64(oi64));
            }
            message.set_field_by_name("os", Value::String(String::new()));
            let bytes = message.encode_to_vec();
            let decoded = DynamicMessage::decode(descriptor.clone(), bytes.as_slice()).expect("decodes");
            let mut written = Vec::new();
            for record in crate::wire_check::records(&bytes) {
                let record = record.expect("a record");
                let field = descriptor.get_field(record.number).expect("a field");
                prop_assert!(stands_alone(&field));
                let value = decode(&field, record.wire_type, record.value).expect("reads");
                prop_assert_eq!(&value, &*decoded.get_field(&field));
                prop_assert!(encode(&field, &value, &mut written));
            }
            prop_assert_eq!(written, bytes);
        }
    }

    #[test]
    fn a_value_of_another_kind_is_not_written() {
        let descriptor = descriptor();
        let field = descriptor.get_field_by_name("i64").expect("i64");
        let mut written = Vec::new();
        assert!(!encode(&field, &Value::String("1".into()), &mut written));
        assert!(written.is_empty());
        assert_eq!(decode(&field, WireType::LengthDelimited, b"\x01a"), None);
    }
}
