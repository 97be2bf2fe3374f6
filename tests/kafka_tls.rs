//! Brokers behind TLS and SASL (Confluent Cloud, MSK, Aiven): librdkafka is built with OpenSSL, so
//! `security.protocol = "SASL_SSL"` is accepted and the consumer speaks TLS on the wire. There is no
//! TLS broker here; a bare TCP listener reads what the consumer sends first.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

#[test]
fn sasl_ssl_is_supported_and_the_consumer_opens_with_a_tls_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = listener.local_addr().unwrap().to_string();
    let mut config = common::config(&broker, "g-tls", "member-events", "http://127.0.0.1:9");
    for (key, value) in [
        ("security.protocol", "SASL_SSL"),
        ("sasl.mechanisms", "SCRAM-SHA-512"),
        ("sasl.username", "bqsink"),
        ("sasl.password", "secret"),
    ] {
        config.kafka.properties.insert(key.into(), value.into());
    }

    // Without TLS support librdkafka refuses the configuration here ("OpenSSL/libssl support not
    // enabled").
    let consumer: BaseConsumer = bqsink::kafka::consumer_config(&config)
        .create()
        .expect("librdkafka accepts SASL_SSL with SCRAM");
    consumer.subscribe(&["member-events"]).unwrap();

    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        consumer.poll(Duration::from_millis(50));
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "the consumer never connected");
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut first = [0u8; 3];
    stream.read_exact(&mut first).unwrap();
    // A TLS record: content type 22 (handshake), then protocol version 3.x. A plaintext Kafka
    // request would start with a 4-byte length instead.
    assert_eq!(first[0], 0x16, "not a TLS handshake: {first:?}");
    assert_eq!(first[1], 0x03, "not a TLS handshake: {first:?}");
}
