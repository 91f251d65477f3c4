#include "server/edge/tls.h"

#include <gtest/gtest.h>

namespace miseg {
namespace {

TEST(IsLoopbackAddressTest, LiteralLoopbackHostsOnly) {
  EXPECT_TRUE(IsLoopbackAddress("127.0.0.1:50051"));
  EXPECT_TRUE(IsLoopbackAddress("127.1.2.3:0"));
  EXPECT_TRUE(IsLoopbackAddress("localhost:50051"));
  EXPECT_TRUE(IsLoopbackAddress("[::1]:50051"));
  EXPECT_FALSE(IsLoopbackAddress("0.0.0.0:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::]:50051"));
  EXPECT_FALSE(IsLoopbackAddress(":50051"));
  EXPECT_FALSE(IsLoopbackAddress("10.0.0.1:50051"));
  // Host names are not resolved: one that merely starts like a loopback address is not one.
  EXPECT_FALSE(IsLoopbackAddress("127.example.com:50051"));
  EXPECT_FALSE(IsLoopbackAddress("localhost.example.com:50051"));
  EXPECT_FALSE(IsLoopbackAddress("[::1:50051"));
}

TEST(LoadServerCredentialsTest, IncompleteSettingsAreRefused) {
  EXPECT_TRUE(LoadServerCredentials("", "", "").ok());
  EXPECT_EQ(LoadServerCredentials("cert.pem", "", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoadServerCredentials("", "", "ca.pem").status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status missing = LoadServerCredentials("/nonexistent/cert.pem", "/nonexistent/key.pem", "").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(missing.message().find("/nonexistent/cert.pem"), absl::string_view::npos);
}

}  // namespace
}  // namespace miseg
