package docker

import "latch/agent/internal/names"

// The name rules are agent/internal/names', shared with agent/compose.
var (
	isName      = names.IsName
	isEnvName   = names.IsEnvName
	isCapName   = names.IsCapName
	isDigestRef = names.IsDigestRef
)
