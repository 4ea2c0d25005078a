# Thin wrapper over the project scripts; the scripts are the source of truth.
.PHONY: build test bench upstream
build:
	CGO_ENABLED=0 go build -o bin/ ./cmd/twill ./cmd/twill-cni
test:
	hack/test.sh
upstream:
	hack/build-upstream.sh
bench: build
	bin/twill bench all
