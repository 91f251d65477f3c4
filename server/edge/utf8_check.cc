// Walks a protobuf message by reflection looking for string fields that are not UTF-8.
#include "server/edge/utf8_check.h"

#include <google/protobuf/descriptor.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dicom/dicom_text.h"

namespace miseg {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::optional<std::string> Walk(const Message& message, const std::string& prefix) {
  const Reflection* reflection = message.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);  // set fields only (and every repeated one)
  for (const FieldDescriptor* field : fields) {
    const std::string name = absl::StrCat(prefix, prefix.empty() ? "" : ".", field->name());
    const bool is_text = field->type() == FieldDescriptor::TYPE_STRING;
    const bool is_message = field->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE;
    if (!is_text && !is_message) continue;
    if (field->is_repeated()) {
      const int size = reflection->FieldSize(message, field);
      for (int i = 0; i < size; ++i) {
        const std::string item = absl::StrCat(name, "[", i, "]");
        if (is_text) {
          std::string scratch;
          const std::string& value =
              reflection->GetRepeatedStringReference(message, field, i, &scratch);
          if (!IsValidUtf8(value)) return item;
        } else if (auto bad = Walk(reflection->GetRepeatedMessage(message, field, i), item)) {
          return bad;
        }
      }
    } else if (is_text) {
      std::string scratch;
      if (!IsValidUtf8(reflection->GetStringReference(message, field, &scratch))) return name;
    } else if (auto bad = Walk(reflection->GetMessage(message, field), name)) {
      return bad;
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> FindInvalidUtf8Field(const Message& message) {
  return Walk(message, "");
}

void DebugCheckUtf8(const Message& message, const char* method) {
#ifndef NDEBUG
  if (std::optional<std::string> bad = FindInvalidUtf8Field(message)) {
    std::fprintf(stderr, "%s: response field %s.%s is not valid UTF-8 (issue 18)\n", method,
                 message.GetDescriptor()->full_name().c_str(), bad->c_str());
    std::abort();
  }
#else
  (void)message;
  (void)method;
#endif
}

}  // namespace miseg
