from xllama.cli import main

raise SystemExit(main())
