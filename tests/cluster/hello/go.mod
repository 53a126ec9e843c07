module tote.dev/testhello

go 1.21
