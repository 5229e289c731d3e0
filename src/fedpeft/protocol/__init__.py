"""The wire protocol: versioned protobuf package ``fedpeft.v1`` (``proto/fedpeft/v1``).

* :mod:`fedpeft.protocol.v1` -- generated stubs (committed; ``scripts/gen_protos.py``);
* :mod:`fedpeft.protocol.serde` -- the only module that imports them: bytes <-> the
  plain dataclasses of :mod:`fedpeft.protocol.wire`;
* :mod:`fedpeft.protocol.version` -- protocol version, method paths, metadata keys.
"""
