from mo_rl.cli import main

main()
