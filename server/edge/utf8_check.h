// The last line of defence for issue 18: every string a response carries must be valid
// UTF-8, or proto3 clients (C++, Python's grpcio) refuse to parse the reply. Text from DICOM
// is made safe where it is read (core/dicom/dicom_text.h); this walks a response before it
// is sent, so a field added later that forgets to cannot regress unnoticed.
//
// Thread-safe (pure functions).
#ifndef MISEG_SERVER_EDGE_UTF8_CHECK_H_
#define MISEG_SERVER_EDGE_UTF8_CHECK_H_

#include <google/protobuf/message.h>

#include <optional>
#include <string>

namespace miseg {

// The path of the first `string` field (singular, repeated or a map's key or value, at any
// depth) of `message` whose value is not valid UTF-8, e.g. "stored[2].study_instance_uid";
// nullopt when all are valid. `bytes` fields are not text and are not looked at.
std::optional<std::string> FindInvalidUtf8Field(const google::protobuf::Message& message);

// In debug builds (NDEBUG undefined), aborts naming the method and the field when
// FindInvalidUtf8Field finds one; in release builds, does nothing (the walk costs a pass over
// the response).
void DebugCheckUtf8(const google::protobuf::Message& message, const char* method);

}  // namespace miseg

#endif  // MISEG_SERVER_EDGE_UTF8_CHECK_H_
