#include "server/rpc.h"

#include <grpcpp/support/proto_buffer_reader.h>

#include "common/slice_buffers.h"

namespace ps {

bool ParseMessage(const grpc::ByteBuffer& bytes,
                  google::protobuf::MessageLite* message) {
  grpc::ByteBuffer shared(bytes);  // shares the slices
  grpc::ProtoBufferReader reader(&shared);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

size_t SerializeAnswer(google::protobuf::MessageLite& answer,
                       grpc::ByteBuffer* out) {
  grpc::Slice bytes(answer.SerializeAsString());
  const size_t size = bytes.size();
  *out = grpc::ByteBuffer(&bytes, 1);
  return size;
}

size_t SerializeAnswer(v1::PullResponse& answer, grpc::ByteBuffer* out) {
  return ToByteBuffer(answer, out);
}

}  // namespace ps
