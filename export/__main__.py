from attnserve.export.cli import main

raise SystemExit(main())
