"""The fault suite: servers killed mid-upload, appliance failures, concurrency, bad input, secrets, fuzzing."""
