from dynamic_asgs.agent.loggregator import envelope_pb2 as _envelope_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor

class IngressResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BatchSenderResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
