from stackgan.cli import main

raise SystemExit(main())
