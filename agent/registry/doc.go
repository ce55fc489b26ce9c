// Package registry fetches images from a Docker Registry HTTP API v2 / OCI
// distribution registry: manifests (Docker schema2 and manifest lists, OCI
// manifests and indexes), resolved to the device's platform, and blobs,
// resumed with Range across restarts and power cuts, for the container
// driver to load into the engine as a docker-archive tarball.
//
// A pull, as the agent does it:
//
//	ref, err := registry.ParsePinned(service.Image)          // a tag alone is refused
//	img, err := client.Image(ctx, ref)                       // list → this device's manifest
//	cfg, err := client.FetchConfig(ctx, img, dir, progress)  // platform checked
//	chains := registry.ChainIDs(cfg.DiffIDs)                 // skip layers the engine has
//	for i, l := range img.Layers { if !engineHas(chains[i]) { client.FetchBlob(ctx, img.Ref, l.Digest, l.Size, dir, progress) } }
//	registry.WriteDockerArchiveOmitting(pipe, img, dir, tag, func(i int) bool { return engineHas(chains[i]) })
//
// Guarantees:
//   - Every manifest is checked against the digest that named it (sha256
//     of its exact bytes) before it is parsed; every blob against its
//     digest and its size before it is renamed into place, so a file named
//     <hex> in a download directory is always the whole, right blob.
//   - A server that sends more than the manifest's size is cut off at once;
//     manifests (4 MiB), configs (8 MiB) and token answers (1 MiB) are
//     bounded too.
//   - Credentials go only to the registry's own host and to the token
//     realm it names, never over plain HTTP unless that host is listed as
//     insecure, and never along a redirect to another host. URLs quoted in
//     errors lose their query (signed CDN URLs carry secrets there).
//
// # Caveats
//
//   - Docker credential helpers (credsStore, credHelpers) are not run:
//     only the auths of a config.json are read.
//   - A partial download whose tail a power cut left as garbage (a file
//     system that does not order data before size) is found out by the
//     digest at the end and fetched whole once more, not repaired in place.
//   - Two fetches of one blob are serialized within one Client only; two
//     processes must not share a download directory.
//   - zstd layers are passed to the engine as they are: whether it loads
//     them is the engine's.
package registry
