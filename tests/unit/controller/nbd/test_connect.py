"""What the controller says of the views it connects to: never their tokens."""

from controller.nbd.connect import redacted


def test_connect_view_tokens_are_redacted_from_messages_that_name_a_view():
    token = "0123456789abcdef" * 2
    text = f"nbd_connect_tcp: handshake: server has no export named 'a@{token}': No such file"
    assert token not in redacted(text) and "'a@<view>'" in redacted(text)
    assert redacted("session 5267f07e of a@5267f07e") == "session 5267f07e of a@5267f07e"
