"""The pre-marshalled publish frames are byte-for-byte what pika would send."""

import pytest
from pika import frame, spec

from workers.rabbitmq.amqp import MessageProperties, Publisher, method_frame


def pika_frames(channel, exchange, routing_key, body, props, body_max):
    parts = [frame.Method(channel, spec.Basic.Publish(exchange=exchange, routing_key=routing_key,
                                                      mandatory=True)).marshal(),
             frame.Header(channel, len(body), props).marshal()]
    for start in range(0, len(body), body_max):
        parts.append(frame.Body(channel, body[start:start + body_max]).marshal())
    return b"".join(parts)


def ours(props: spec.BasicProperties) -> bytes:
    return b"".join(props.encode())


CASES = [
    ("default exchange, short body", "", "pike", b"E_PIKE_BLOCKED\nip::192.168.2.11\n"),
    ("named exchange", "events", "sipmsg", b"E_SIP_MESSAGE\nuser::alice\nmsg::hi\n"),
    ("empty body", "", "q", b""),
    ("body of 16384 bytes", "x", "k", b"a" * 16384),
    ("unicode names", "\u00e9change", "cl\u00e9", "\u00e9v\u00e9nement\n".encode()),
    ("body larger than one frame", "", "big", bytes(range(256)) * 600),
]


@pytest.mark.parametrize("what, exchange, routing_key, body", CASES, ids=[c[0] for c in CASES])
def test_publish_frames_equal_what_pika_marshals(what, exchange, routing_key, body):
    props = spec.BasicProperties(content_type="text/plain")
    publisher = Publisher(1, frame_max=131072)
    assert b"".join(publisher.frames(exchange, routing_key, body, ours(props))) == pika_frames(
        1, exchange, routing_key, body, props, 131072 - 8)


def test_a_small_frame_max_splits_the_body_like_pika():
    props = spec.BasicProperties()
    body = b"0123456789" * 1000
    assert b"".join(Publisher(3, frame_max=4096).frames("", "k", body, ours(props))) == pika_frames(
        3, "", "k", body, props, 4088)


def test_a_routing_key_over_255_bytes_is_refused_with_its_length():
    with pytest.raises(ValueError, match="routing key is 256 bytes"):
        method_frame(1, "", "k" * 256, True)


PROPERTY_CASES = [
    # event, content type, persistent, message id, timestamp, app id
    ("E_SIP_MESSAGE", "text/plain", False, "3f2a9c01d4e7-1", 1_790_000_000, "opsevent"),
    ("E_PIKE_BLOCKED", "application/json", True, "00-18446744073709551615", 0, "sbc-7"),
    ("\u00c9V\u00c9NEMENT", "text/plain", True, "x", 2**40, "\u00e9"),
]


@pytest.mark.parametrize("event, content_type, persistent, message_id, timestamp, app_id", PROPERTY_CASES)
def test_message_properties_equal_what_pika_marshals(event, content_type, persistent, message_id,
                                                     timestamp, app_id):
    props = MessageProperties(app_id)
    marshalled = props.head(event.encode(), content_type, persistent) + props.tail(message_id.encode(), timestamp)
    expected = spec.BasicProperties(content_type=content_type, headers={"event": event},
                                    delivery_mode=2 if persistent else None, message_id=message_id,
                                    timestamp=timestamp, app_id=app_id)
    assert marshalled == ours(expected)
    decoded = spec.BasicProperties()
    decoded.decode(marshalled)
    assert (decoded.headers, decoded.message_id, decoded.timestamp) == ({"event": event}, message_id, timestamp)


def test_one_properties_maker_marshals_ids_of_any_length_in_any_order_like_pika():
    props = MessageProperties("opsevent")  # keeps a layout per id length: reused, never mixed up
    for size in (1, 255, 14, 2, 255, 1, 128):
        message_id = "i" * size
        marshalled = props.head(b"E_X", "text/plain", False) + props.tail(message_id.encode(), size)
        assert marshalled == ours(spec.BasicProperties(content_type="text/plain", headers={"event": "E_X"},
                                                       message_id=message_id, timestamp=size, app_id="opsevent"))


def test_without_the_event_header_the_properties_have_no_headers_table_like_pika():
    props = MessageProperties("opsevent", event_header=False)
    marshalled = props.head(b"E_X", "text/plain", True) + props.tail(b"id-1", 5)
    assert marshalled == ours(spec.BasicProperties(content_type="text/plain", delivery_mode=2, message_id="id-1",
                                                   timestamp=5, app_id="opsevent"))


def test_an_app_id_over_255_bytes_is_refused_with_its_length():
    with pytest.raises(ValueError, match="app_id is 256 bytes"):
        MessageProperties("a" * 256)
