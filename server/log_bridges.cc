#include "server/log_bridges.h"

#include <string>

#include <dcmtk/oflog/appender.h>
#include <dcmtk/oflog/logger.h>
#include <dcmtk/oflog/spi/logevent.h>
#include <grpc/support/log.h>

#include "server/log.h"

namespace miseg {
namespace {

void GrpcToLog(gpr_log_func_args* args) {
  const char* level = args->severity == GPR_LOG_SEVERITY_ERROR  ? "error"
                      : args->severity == GPR_LOG_SEVERITY_INFO ? "info"
                                                                : "debug";
  Log(std::string("grpc: ") + (args->message ? args->message : "") + " (" +
          (args->file ? args->file : "?") + ":" + std::to_string(args->line) + ")",
      level);
}

class DcmtkToLog : public dcmtk::log4cplus::Appender {
 public:
  ~DcmtkToLog() override { destructorImpl(); }
  void close() override {}

 protected:
  void append(const dcmtk::log4cplus::spi::InternalLoggingEvent& event) override {
    const dcmtk::log4cplus::LogLevel severity = event.getLogLevel();
    const char* level = severity >= dcmtk::log4cplus::ERROR_LOG_LEVEL  ? "error"
                        : severity >= dcmtk::log4cplus::WARN_LOG_LEVEL ? "warning"
                        : severity >= dcmtk::log4cplus::INFO_LOG_LEVEL ? "info"
                                                                       : "debug";
    Log(std::string("dcmtk: ") + event.getLoggerName().c_str() + ": " +
            event.getMessage().c_str(),
        level);
  }
};

}  // namespace

void InstallLogBridges() {
  if (log_internal::Format().load() == LogFormat::kText) return;
  gpr_set_log_function(&GrpcToLog);
  dcmtk::log4cplus::Logger root = dcmtk::log4cplus::Logger::getRoot();
  root.removeAllAppenders();
  root.addAppender(dcmtk::log4cplus::SharedAppenderPtr(new DcmtkToLog()));
}

}  // namespace miseg
