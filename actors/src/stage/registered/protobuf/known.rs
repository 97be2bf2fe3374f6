//! The `.proto` files Confluent's serializers bundle and import without registering them as
//! references (`ProtobufSchema`'s known dependencies), so a registered schema may import them with
//! no reference: Google's civil date and time of day, and Confluent's decimal and field metadata.
//! protobuf's own well-known types (`google/protobuf/*.proto`) come with protox.
//!
//! Written here to the messages' published field numbers and types (the wire format is all that
//! decoding needs); comments and options left out.

/// The source of a bundled file, by its import name.
pub fn source(name: &str) -> Option<&'static str> {
    match name {
        "google/type/date.proto" => Some(DATE),
        "google/type/timeofday.proto" => Some(TIME_OF_DAY),
        "confluent/type/decimal.proto" => Some(DECIMAL),
        "confluent/meta.proto" => Some(META),
        _ => None,
    }
}

const DATE: &str = r#"syntax = "proto3";
package google.type;
message Date {
  int32 year = 1;
  int32 month = 2;
  int32 day = 3;
}
"#;

const TIME_OF_DAY: &str = r#"syntax = "proto3";
package google.type;
message TimeOfDay {
  int32 hours = 1;
  int32 minutes = 2;
  int32 seconds = 3;
  int32 nanos = 4;
}
"#;

const DECIMAL: &str = r#"syntax = "proto3";
package confluent.type;
message Decimal {
  bytes value = 1;
  uint32 precision = 2;
  int32 scale = 3;
}
"#;

const META: &str = r#"syntax = "proto3";
package confluent;
import "google/protobuf/descriptor.proto";
message Meta {
  string doc = 1;
  map<string, string> params = 2;
  repeated string tags = 3;
}
extend google.protobuf.FileOptions { Meta file_meta = 1088; }
extend google.protobuf.MessageOptions { Meta message_meta = 1088; }
extend google.protobuf.FieldOptions { Meta field_meta = 1088; }
extend google.protobuf.EnumOptions { Meta enum_meta = 1088; }
extend google.protobuf.EnumValueOptions { Meta enum_value_meta = 1088; }
"#;
