//! Cost per event of upcasting with the example chain (`orders.OrderCreated`
//! v1 -> v2 -> v3: rename, set_default, convert) from `config/jetline.yaml`,
//! next to its baselines in the same run: decoding the payload alone, and
//! decoding the whole envelope. Run with `cargo bench --bench upcast`; the
//! ratio is (decode + upcast) / decode. Also the check a sink that passes
//! the source's bytes on makes instead: a v3 payload validated on the wire
//! (`wire_check`) against decoded.

use std::{hint::black_box, path::Path};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage as _};

fn upcast(c: &mut Criterion) {
    let config = jetline::config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/jetline.yaml"
    )))
    .expect("the example config loads");
    let prepared = jetline::prepare(config).expect("the example config prepares");
    let upcasters = &prepared.upcasters;
    let decoder = &prepared.decoder;
    let v1 = decoder
        .registry()
        .resolve("orders.OrderCreated", 1)
        .expect("v1")
        .clone();
    // A typical order: ids, a total and two line items.
    let envelope_json = serde_json::json!({
        "eventId": "0b7c6f1e-6a43-4d0e-9c5e-0f3c1a2b4d5e",
        "eventType": "orders.OrderCreated",
        "schemaVersion": 1,
        "aggregateType": "Order",
        "aggregateId": "order-1234",
        "occurredAt": "2026-11-23T10:00:00Z",
        "correlationId": "corr-1",
        "source": "checkout",
        "payload": {
            "orderId": "order-1234",
            "customerId": "customer-42",
            "total": 1234.56,
            "items": [
                { "sku": "SKU-1", "quantity": 2, "unitPrice": 100.5 },
                { "sku": "SKU-2", "quantity": 1, "unitPrice": 1033.56 }
            ]
        }
    });
    let envelope = decoder
        .decode(
            Some("application/json"),
            &serde_json::to_vec(&envelope_json).expect("json"),
        )
        .expect("a valid v1 event");
    let payload_bytes = envelope.payload.encode_to_vec();
    let envelope_bytes = envelope.encode_protobuf();

    let mut group = c.benchmark_group("upcast");
    group.throughput(Throughput::Elements(1));
    group.bench_function("baseline: decode v1 payload", |b| {
        b.iter(|| DynamicMessage::decode(v1.clone(), black_box(payload_bytes.as_slice())))
    });
    group.bench_function("decode v1 payload + upcast to v3", |b| {
        b.iter(|| {
            let payload = DynamicMessage::decode(v1.clone(), black_box(payload_bytes.as_slice()))
                .expect("decodes");
            upcasters
                .upcast_payload("orders.OrderCreated", 1, 3, payload)
                .expect("upcasts")
        })
    });
    group.bench_function("upcast v1 to v3 (decoded payload)", |b| {
        b.iter_batched(
            || envelope.payload.clone(),
            |payload| {
                upcasters
                    .upcast_payload("orders.OrderCreated", 1, 3, payload)
                    .expect("upcasts")
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("baseline: decode v1 envelope", |b| {
        b.iter(|| decoder.decode(None, black_box(envelope_bytes.as_slice())))
    });
    group.bench_function("decode v1 envelope + upcast to v3", |b| {
        b.iter(|| {
            let mut envelope = decoder
                .decode(None, black_box(envelope_bytes.as_slice()))
                .expect("decodes");
            upcasters.upcast(&mut envelope, None).expect("upcasts");
            envelope
        })
    });
    // What a sink that writes bytes does with a v1 event: the payload
    // validated and upcast on the wire, the v3 envelope written.
    let v1_envelope = bytes::Bytes::from(envelope_bytes.clone());
    let valid = |_: &str, _: u32| jetline::envelope::PayloadNeed::Valid;
    let protobuf = jetline::envelope::Encoding::Protobuf;
    group.bench_function("decode v1 envelope + upcast to v3 + encode", |b| {
        b.iter(|| {
            let mut envelope = decoder
                .decode(None, black_box(envelope_bytes.as_slice()))
                .expect("decodes");
            upcasters.upcast(&mut envelope, None).expect("upcasts");
            envelope.encode_protobuf()
        })
    });
    group.bench_function("on the wire: v1 envelope -> v3 envelope", |b| {
        b.iter(|| {
            let mut envelope = decoder
                .decode_for(protobuf, black_box(&v1_envelope), valid)
                .expect("decodes");
            upcasters.upcast(&mut envelope, None).expect("upcasts");
            envelope.encode_protobuf()
        })
    });
    group.bench_function("on the wire: upcast v1 to v3 (validated payload)", |b| {
        b.iter_batched(
            || {
                decoder
                    .decode_for(protobuf, &v1_envelope, valid)
                    .expect("decodes")
            },
            |mut envelope| {
                upcasters.upcast(&mut envelope, None).expect("upcasts");
                envelope
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    let mut at_v3 = envelope.clone();
    upcasters.upcast(&mut at_v3, None).expect("upcasts");
    let v3 = at_v3.payload.descriptor();
    let v3_bytes = at_v3.payload.encode_to_vec();
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("decode v3 payload + unknown-field walk", |b| {
        b.iter(|| {
            let payload = DynamicMessage::decode(v3.clone(), black_box(v3_bytes.as_slice()))
                .expect("decodes");
            jetline::wire_check::unknown_field_path(&payload)
        })
    });
    group.bench_function("validate v3 payload on the wire", |b| {
        b.iter(|| {
            jetline::wire_check::validate(
                &v3,
                black_box(v3_bytes.as_slice()),
                jetline::config::UnknownFields::Reject,
            )
        })
    });
    group.finish();

    // The envelope's own share of the hot path: read for a sink that passes
    // the source's bytes on, read whole, and written after an upcast.
    let v3_envelope = bytes::Bytes::from(at_v3.encode_protobuf());
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(1));
    for (need, name) in [
        (
            jetline::envelope::PayloadNeed::Valid,
            "decode v3 envelope, payload validated only",
        ),
        (
            jetline::envelope::PayloadNeed::Message,
            "decode v3 envelope, payload decoded",
        ),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                decoder.decode_for(
                    jetline::envelope::Encoding::Protobuf,
                    black_box(&v3_envelope),
                    |_, _| need,
                )
            })
        });
    }
    group.bench_function("encode v3 envelope", |b| {
        b.iter(|| black_box(&at_v3).encode_protobuf())
    });
    group.finish();
}

criterion_group!(benches, upcast);
criterion_main!(benches);
