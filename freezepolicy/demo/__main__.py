from .digits import main

raise SystemExit(main())
