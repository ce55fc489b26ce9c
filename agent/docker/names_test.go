package docker

import "regexp"

// volumeName is the pattern of a short name, for the tests that check a
// name the driver makes (the matchers themselves are tested in
// agent/internal/names).
var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)
