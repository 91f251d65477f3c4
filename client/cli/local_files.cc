#include "client/cli/local_files.h"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "core/dicom/instance_info.h"
#include "core/dicom/series_reader.h"

namespace miseg::cli {

absl::StatusOr<std::vector<DicomBuffer>> LoadPaths(const std::vector<std::string>& paths) {
  std::vector<DicomBuffer> files;
  for (const std::string& path : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      absl::StatusOr<std::vector<DicomBuffer>> folder = LoadDicomFolder(path);
      if (!folder.ok()) return folder.status();
      for (DicomBuffer& b : *folder) files.push_back(std::move(b));
    } else if (std::filesystem::is_regular_file(path, ec)) {
      FILE* f = fopen(path.c_str(), "rb");
      if (!f) return absl::NotFoundError(absl::StrCat("cannot read ", path));
      DicomBuffer buffer{path, ""};
      char chunk[1 << 16];
      size_t n;
      while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) buffer.bytes.append(chunk, n);
      fclose(f);
      files.push_back(std::move(buffer));
    } else {
      return absl::NotFoundError(absl::StrCat(path, ": no such file or folder"));
    }
  }
  return files;
}

LocalFiles GroupIntoStudies(std::vector<DicomBuffer> files) {
  LocalFiles result;
  std::map<std::string, size_t> study_of_series;
  std::vector<std::pair<DicomBuffer, InstanceInfo>> segs;
  for (DicomBuffer& file : files) {
    result.bytes += static_cast<int64_t>(file.bytes.size());
    absl::StatusOr<InstanceInfo> info = IdentifyInstance(file);
    if (!info.ok()) {
      result.others.push_back(std::move(file));
      continue;
    }
    if (info->is_segmentation) {
      segs.emplace_back(std::move(file), *std::move(info));
      continue;
    }
    auto [it, inserted] = study_of_series.try_emplace(info->series_instance_uid, result.studies.size());
    if (inserted) result.studies.push_back({info->series_instance_uid, {}, 0, 0, 0});
    LocalStudy& study = result.studies[it->second];
    study.bytes += static_cast<int64_t>(file.bytes.size());
    ++study.images;
    study.files.push_back(std::move(file));
  }
  for (auto& [file, info] : segs) {
    std::optional<size_t> target;
    for (const std::string& ref : info.referenced_series_instance_uids) {
      auto it = study_of_series.find(ref);
      if (it != study_of_series.end()) target = it->second;
    }
    if (!target) {
      result.others.push_back(std::move(file));
      continue;
    }
    LocalStudy& study = result.studies[*target];
    study.bytes += static_cast<int64_t>(file.bytes.size());
    ++study.segmentations;
    study.files.push_back(std::move(file));
  }
  return result;
}

absl::Status WriteOutputFile(const std::string& path, const std::string& bytes) {
  const std::filesystem::path target(path);
  std::error_code ec;
  if (target.has_parent_path()) std::filesystem::create_directories(target.parent_path(), ec);
  const std::string temporary = absl::StrCat(path, ".", getpid(), ".tmp");
  FILE* f = fopen(temporary.c_str(), "wb");
  if (!f) return absl::InvalidArgumentError(absl::StrCat("cannot write ", path));
  const bool written = fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const bool flushed = fflush(f) == 0 && fsync(fileno(f)) == 0;
  const bool closed = fclose(f) == 0;
  if (!written || !flushed || !closed || std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    return absl::InvalidArgumentError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

}  // namespace miseg::cli
